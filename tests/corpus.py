"""A corpus of odd and broken files, each with the outcome `cifar predict` must give it."""

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

GOOD, BAD = "predicted", "error"


def make_corpus(root: Path) -> dict[str, str]:
    """Writes the files under root; returns {relative path of each image file: outcome}.
    Files that are not image files (by name), hidden files and folders get no row at all."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    expected = {}

    def save(name, outcome, write):
        write(root / name)
        expected[name] = outcome

    save("plain.jpg", GOOD, lambda p: photo.save(p, quality=90))
    save("UPPER.JPEG", GOOD, lambda p: photo.save(p, format="JPEG"))
    save("palette_transparent.png", GOOD, lambda p: palette_with_transparency().save(p, transparency=0))
    save("la.png", GOOD, lambda p: photo.convert("LA").save(p))
    save("rgba.webp", GOOD, lambda p: photo.convert("RGBA").save(p))
    save("cmyk.jpg", GOOD, lambda p: photo.convert("CMYK").save(p))
    save("sixteen_bit.png", GOOD, lambda p: Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(p))
    save("float.tiff", GOOD, lambda p: Image.fromarray(rng.random((20, 20), dtype=np.float32)).save(p))
    save("exif_rotated.jpg", GOOD, lambda p: exif_rotated(photo, p))
    save("animated.gif", GOOD, lambda p: animated(p))
    save("tiny.bmp", GOOD, lambda p: Image.new("RGB", (1, 1), (255, 0, 0)).save(p))
    save("zero_bytes.jpg", BAD, lambda p: p.write_bytes(b""))
    save("truncated.jpg", BAD, lambda p: p.write_bytes(jpeg_bytes(photo)[:200]))
    save(
        "corrupt.png",
        BAD,
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 300, dtype=np.uint8))),
    )
    save("text.jpg", BAD, lambda p: p.write_text("this is not an image\n"))
    save("random.png", BAD, lambda p: p.write_bytes(bytes(rng.integers(0, 256, 1000, dtype=np.uint8))))
    save("bomb.png", BAD, lambda p: decompression_bomb(p))
    save("broken_link.png", BAD, lambda p: os.symlink(root / "does-not-exist.png", p))
    (root / "folder.jpg").mkdir()  # a folder with an image's name: walked, no row
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden.jpg").write_bytes(jpeg_bytes(photo))
    (root / "sub").mkdir()
    save("sub/nested.png", GOOD, lambda p: photo.save(p))
    os.symlink(root, root / "sub" / "loop")  # a symlink loop back to the root
    return expected


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (4, 4, 12, 12))
    return image


def exif_rotated(photo: Image.Image, path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    photo.save(path, exif=exif)


def animated(path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), color) for color in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def decompression_bomb(path: Path) -> None:
    """A small PNG that claims more pixels than Pillow's guard allows (2x its limit)."""
    side = int((Image.MAX_IMAGE_PIXELS * 2) ** 0.5) + 1
    Image.new("1", (side, side)).save(path, optimize=True)
