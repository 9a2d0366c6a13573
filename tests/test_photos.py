"""Ordinary photos at their real sizes: large, progressive, EXIF-rotated, CMYK and 16-bit files
decode through libjpeg's reduced-size path (JPEGs) to the same pixels a full decode gives."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from cifarcli.images import decode_image, decode_upright, fit_to_square, to_rgb

WIDTH, HEIGHT = 2400, 1600


def scene(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A smooth photo-like picture: a colour gradient with a red disc left of centre and a blue
    square right of it, so a wrong crop, turn or colour conversion shows."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = np.stack([xx / width * 200, yy / height * 200, np.full_like(xx, 90)], axis=-1)
    image[(xx - 0.4 * width) ** 2 + (yy - 0.5 * height) ** 2 < (0.12 * height) ** 2] = (230, 30, 30)
    image[(abs(xx - 0.62 * width) < 0.08 * height) & (abs(yy - 0.5 * height) < 0.08 * height)] = (20, 40, 220)
    return image.astype(np.uint8)


def save_rotated(path, pixels):
    """Stored turned a quarter to the left, with EXIF orientation 6 to turn it back on display."""
    stored = Image.fromarray(np.rot90(pixels, 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=92, exif=exif)


PHOTOS = {
    "large.jpg": lambda path, pixels: Image.fromarray(pixels).save(path, quality=92),
    "progressive.jpg": lambda path, pixels: Image.fromarray(pixels).save(path, quality=92, progressive=True),
    "rotated.jpg": save_rotated,
    "cmyk.jpg": lambda path, pixels: Image.fromarray(pixels).convert("CMYK").save(path, quality=92),
    "sixteen.png": lambda path, pixels: Image.fromarray(
        (pixels.astype(np.uint16).mean(-1) * 257).astype(np.uint16)
    ).save(path),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    pixels = scene()
    for name, save in PHOTOS.items():
        save(root / name, pixels)
    return root


def full_decode(path, size: int = 32) -> np.ndarray:
    """The reference: every pixel decoded, then turned, converted, cropped and resized."""
    with Image.open(path) as image:
        image.load()
        return np.asarray(fit_to_square(to_rgb(ImageOps.exif_transpose(image)), size))


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_photos_decode_like_a_full_decode(name, photos):
    pixels = decode_image(photos / name, 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    difference = np.abs(pixels.astype(int) - full_decode(photos / name).astype(int))
    assert difference.mean() < 4 and np.percentile(difference, 99) < 40, name


@pytest.mark.parametrize("name", ["large.jpg", "progressive.jpg", "rotated.jpg", "cmyk.jpg"])
def test_jpegs_are_decoded_at_reduced_size(name, photos):
    with Image.open(photos / name) as image:
        upright = decode_upright(image, 32)
        assert max(upright.size) <= WIDTH // 8 and min(upright.size) >= 32, upright.size


def test_the_rotated_photo_is_shown_upright(photos):
    # Upright, the scene is landscape: after the centre crop the disc is left (red) and the square
    # right (blue), at mid height.
    pixels = decode_image(photos / "rotated.jpg", 32).astype(int)
    left, right = pixels[16, 11], pixels[16, 22]  # the disc and the square centres after the crop
    assert left[0] > 150 > left[2] and right[2] > 150 > right[0]
    assert np.abs(pixels - decode_image(photos / "large.jpg", 32).astype(int)).mean() < 4
