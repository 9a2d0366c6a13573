"""Robust image decoding: any file Pillow can read becomes uint8 RGB pixels of the model's size.

Used by data loading (training image folders) and by prediction; imports no torch.

Resize policy: the image is centre-cropped to a square, then resized to the model's input with
Pillow's reducing BOX filter followed by a bicubic resize (antialiased). CIFAR-10 objects fill a
centred square, so a centre crop keeps their proportions instead of squashing them.
"""

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarcli.errors import ImageDecodeError, first_line

try:  # libjpeg-turbo without Pillow's Python around it; Pillow decodes JPEGs where it is missing
    import simplejpeg
except ImportError:
    simplejpeg = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Composite transparent pixels onto mid grey: neither black nor white biases a class.
ALPHA_BACKGROUND = (128, 128, 128)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode (palette, LA, RGBA, CMYK, 16-bit, float) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float images: scale their own range to 0..255 instead of clipping.
        values = np.asarray(image, dtype=np.float64)
        low, high = np.nanmin(values), np.nanmax(values)
        scale = 255.0 / (high - low) if high > low else 0.0
        gray = np.nan_to_num((values - low) * scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


def fit_to_square(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    if (width, height) == (size, size):
        return image
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)


def decode_upright(image: Image.Image, size: int) -> Image.Image:
    """The first frame, decoded as small as still covers size x size, turned by its EXIF
    orientation. JPEGs are scaled by libjpeg while decoding (by 1/2, 1/4 or 1/8, in the DCT
    domain), so a 2400x1600 photo decodes as 300x200: a fraction of the pixels and the time."""
    image.seek(0)
    image.draft("RGB", (size, size))
    return ImageOps.exif_transpose(image)


def open_regular_file(path: "str | Path"):
    """The file opened for reading, or ImageDecodeError when it is not a regular file: opening a
    FIFO or a device would block or read forever, so it is opened without blocking and checked."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise ImageDecodeError(f"{path}: cannot be read ({error.strerror})") from None
    kind = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(kind):
        os.close(descriptor)
        what = "a FIFO" if stat.S_ISFIFO(kind) else "a socket" if stat.S_ISSOCK(kind) else "a device or folder"
        raise ImageDecodeError(f"{path}: not a regular file ({what})")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def read_regular_file(path: "str | Path") -> bytes:
    with open_regular_file(path) as file:
        return file.read()


def exif_orientation(data: bytes) -> int:
    """A JPEG's EXIF orientation tag (1 when it has none), read from its APP1 segment: Pillow's
    own reading of it costs as much Python as the rest of a small file's decoding."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker, length = data[position + 1], int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:  # the image data starts: no EXIF before it
            return 1
        segment = data[position + 4 : position + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\0\0":
            tiff = segment[6:]
            order = "little" if tiff[:2] == b"II" else "big"
            first = int.from_bytes(tiff[4:8], order)
            for entry in range(int.from_bytes(tiff[first : first + 2], order)):
                start = first + 2 + 12 * entry
                if int.from_bytes(tiff[start : start + 2], order) == 0x0112:
                    return int.from_bytes(tiff[start + 8 : start + 10], order)
            return 1
        position += 2 + length
    return 1


# How to turn an image by its EXIF orientation, as ImageOps.exif_transpose does.
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


def decodes_without_gil(data: bytes) -> bool:
    """A JPEG, with simplejpeg installed: libjpeg-turbo decodes it directly, without the GIL."""
    return simplejpeg is not None and data[:2] == b"\xff\xd8"


def decode_jpeg_quickly(data: bytes, size: int) -> "np.ndarray | None":
    """A baseline or progressive RGB or grey JPEG through libjpeg-turbo (simplejpeg), which scales
    it in the DCT as Pillow's draft does and runs without the GIL and without Pillow's per-file
    Python: the same pixels, several times faster on small files. None when Pillow must decode it
    (simplejpeg missing, CMYK, damaged, or over Pillow's pixel limit, which Pillow refuses)."""
    if not decodes_without_gil(data):
        return None
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        if height * width > 2 * Image.MAX_IMAGE_PIXELS:
            return None
        # Pillow's draft scale: the largest of 1/8, 1/4, 1/2 that keeps both sides at least size.
        scale = next(factor for factor in (8, 4, 2, 1) if factor <= min(width // size, height // size) or factor == 1)
        least = {"min_height": -(-height // scale), "min_width": -(-width // scale)}
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", **least)
    except Exception:  # anything simplejpeg will not decode, Pillow decodes or explains
        return None
    image = Image.fromarray(pixels)
    turn = ORIENTATIONS.get(exif_orientation(data))
    return np.asarray(fit_to_square(image.transpose(turn) if turn is not None else image, size), dtype=np.uint8)


def decode_image(source: "str | Path | bytes", size: int, name: "str | None" = None) -> np.ndarray:
    """Decode one image (a path, or its bytes and the name messages give it) to a (size, size, 3)
    uint8 RGB array: JPEGs through libjpeg-turbo directly where it can, everything else through
    Pillow.

    Raises ImageDecodeError, and nothing else, for any file that is not a usable image.
    """
    name = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    data = source if isinstance(source, bytes) else read_regular_file(source)
    if not data:
        raise ImageDecodeError(f"{name}: not a readable image (an empty file)")
    pixels = decode_jpeg_quickly(data, size)
    if pixels is not None:
        return pixels
    try:
        with warnings.catch_warnings():
            # Images over Pillow's pixel limit decode (draft mode keeps them small); twice over is a bomb.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                pixels = np.asarray(fit_to_square(to_rgb(decode_upright(image, size)), size), dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb ({first_line(error)})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not a readable image (not an image format Pillow reads)") from None
    except Exception as error:  # Pillow's plugins raise a zoo of types on hostile input
        raise ImageDecodeError(f"{name}: not a readable image ({first_line(error)})") from None
    if pixels.shape != (size, size, 3):
        raise ImageDecodeError(f"{name}: decoded to an unexpected shape {pixels.shape}")
    return pixels
