"""The image decoder: every odd kind becomes RGB pixels of the model's size, every broken one
our own error type, and nothing else, whatever the bytes."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifarcli.errors import ImageDecodeError
from cifarcli.images import decode_image, fit_to_square
from tests.corpus import GOOD, make_corpus

JPEG_BUILDS_LEVELS = 3  # of 255: what two libjpeg-turbo builds may differ by on one pixel


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root)


def test_every_corpus_file_decodes_or_fails_with_our_error(corpus):
    root, expected = corpus
    for name, outcome in expected.items():
        if outcome == GOOD:
            pixels = decode_image(root / name, 32)
            assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8, name
        else:
            with pytest.raises(ImageDecodeError) as caught:
                decode_image(root / name, 32)
            assert name.split("/")[-1] in str(caught.value)


def test_bomb_is_reported_as_a_bomb(corpus):
    root, _ = corpus
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(root / "bomb.png", 32)


def test_exif_orientation_is_applied(tmp_path):
    # Left half red, right half blue; orientation 6 turns it so red ends on top.
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)
    image[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(tmp_path / "r.png", exif=exif)
    pixels = decode_image(tmp_path / "r.png", 32)
    assert pixels[2, 16, 0] > 200 and pixels[29, 16, 2] > 200


def test_transparent_pixels_composite_onto_grey(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert decode_image(tmp_path / "clear.png", 8)[0, 0].tolist() == [128, 128, 128]


def test_centre_crop_keeps_proportions():
    wide = Image.new("RGB", (96, 32), (0, 0, 0))
    wide.paste((255, 255, 255), (32, 0, 64, 32))  # a white centre square between black bands
    assert np.asarray(fit_to_square(wide, 32)).min() > 200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_give_pixels_or_our_error(raw):
    try:
        pixels = decode_image(raw, 32)
    except ImageDecodeError:
        return
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=512), st.integers(0, 2000))
def test_damaged_real_images_give_pixels_or_our_error(noise, position):
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    position %= len(raw)
    raw[position : position + len(noise)] = noise
    try:
        pixels = decode_image(bytes(raw), 32)
    except ImageDecodeError:
        return
    assert pixels.shape == (32, 32, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["baseline", "progressive", "grey", "444"])
def test_jpegs_decoded_by_libjpeg_turbo_directly_give_pillows_pixels(orientation, kind, tmp_path, monkeypatch):
    from cifarcli import images

    rng = np.random.default_rng(orientation)
    picture = Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)).resize((390, 270))
    picture = picture.convert("L") if kind == "grey" else picture
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"progressive": kind == "progressive", "subsampling": 0 if kind == "444" else 2}
    picture.save(tmp_path / "photo.jpg", quality=90, exif=exif, **options)
    data = (tmp_path / "photo.jpg").read_bytes()
    assert images.exif_orientation(data) == orientation
    for size in (32, 64):
        direct = images.decode_image(data, size).astype(int)
        with monkeypatch.context() as patch:
            patch.setattr(images, "simplejpeg", None)  # Pillow alone, as where simplejpeg is not installed
            by_pillow = images.decode_image(data, size).astype(int)
        # Two builds of libjpeg-turbo may round their IDCT and chroma upsampling apart by a level or
        # two; a wrong turn, crop, scale or colour order is tens of levels off.
        difference = np.abs(direct - by_pillow)
        assert difference.max() <= JPEG_BUILDS_LEVELS and difference.mean() <= 0.5, difference.max()
