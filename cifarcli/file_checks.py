"""The files kind of `cifar check`: what is wrong with one file, read from its bytes alone.

Each file is decoded once, to the model's input size, by images.decode_image (the decoding
that training and prediction use); its header says the rest: the format against the name's
extension, the mode, the size. A file that cannot be decoded is a finding, never an error.
"""

import io
import warnings
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from cifarcli.errors import ImageDecodeError
from cifarcli.findings import Finding
from cifarcli.images import decode_image, simplejpeg

TINY_SIDE = 8  # px: smaller images hold too little to learn from
EXTREME_ASPECT = 4.0  # long side over short side: a centre crop keeps a quarter of the image or less
FORMATS_OF_EXTENSIONS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP",
    ".tif": "TIFF", ".tiff": "TIFF",
}  # fmt: skip
SIGNATURES = {
    b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"II*\0": "TIFF", b"MM\0*": "TIFF",
}  # fmt: skip
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def header(data: bytes) -> "tuple[str, str, int, int, bool] | None":
    """(format, mode, width, height, has transparency) from the file's header, without decoding
    the pixels; None when no reader knows the format."""
    if data[:2] == b"\xff\xd8" and simplejpeg is not None:
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            return "JPEG", {"Gray": "L", "CMYK": "CMYK", "YCCK": "CMYK"}.get(colorspace, "RGB"), width, height, False
        except Exception:  # Pillow reads the header, or says why not
            pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                transparent = image.mode in ALPHA_MODES or "transparency" in image.info
                return image.format or "", image.mode, image.width, image.height, transparent
    except Image.DecompressionBombError:
        return "bomb", "", 0, 0, False
    except Exception:
        return None


def inspect_file(name: str, data: bytes, size: int, named: bool = True) -> tuple["np.ndarray | None", list[Finding]]:
    """(pixels at size x size, or None when unusable; the file's findings). named: the name is a
    file's, whose extension should match its format."""
    found = []

    def finding(problem: str, detail: str, score: float = 1.0) -> None:
        found.append(Finding("files", problem, name, score, detail=detail))

    if not data:
        finding("zero-byte", "an empty file")
        return None, found
    described = header(data)
    extension = PurePosixPath(name).suffix.lower()
    if described is None:
        signed = next((name for signature, name in SIGNATURES.items() if data.startswith(signature)), None)
        if signed == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            finding("truncated", f"a JPEG that ends after {len(data):,} bytes, before its image")
        elif signed:
            finding("undecodable", f"begins as a {signed} file but no reader makes sense of it")
        else:
            finding("not an image", f"no image format reads it ({len(data):,} bytes)")
        return None, found
    image_format, mode, width, height, transparent = described
    expected = FORMATS_OF_EXTENSIONS.get(extension)
    if named and image_format not in ("bomb", expected):
        finding("wrong extension", f"a {image_format} file named {extension or 'without an extension'}", 0.5)
    if image_format == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        finding("truncated", "the JPEG ends before its end-of-image marker")
    try:
        pixels = decode_image(data, size, name)
    except ImageDecodeError as error:
        why = str(error).split(": ", 1)[-1]
        problem = "decompression bomb" if "bomb" in why else "truncated" if "truncated" in why else "undecodable"
        if problem != "truncated" or not any(f.problem == "truncated" for f in found):
            finding(problem, why)
        return None, found
    if mode in HIGH_BIT_DEPTH_MODES:
        finding("unusual mode", f"{mode}: more than 8 bits per channel, reduced to 8", 0.3)
    elif mode == "CMYK":
        finding("unusual mode", "CMYK: converted to RGB, colours may shift", 0.3)
    elif transparent:
        finding("unusual mode", f"{mode} with transparency: composited onto grey", 0.3)
    if min(width, height) < TINY_SIDE:
        finding("tiny", f"{width}x{height} px", 0.5)
    elif max(width, height) / min(width, height) > EXTREME_ASPECT:
        finding(
            "extreme aspect",
            f"{width}x{height} px: the centre crop keeps {min(width, height) / max(width, height):.0%}",
            0.4,
        )
    return pixels, found
