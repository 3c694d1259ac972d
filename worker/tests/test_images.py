"""The image gate shared by scraping and labeling: allow-listed formats and the pixel limit.

Every crafted image is generated here: ``make_large_png`` streams rows of zeros through zlib (a
real, decodable bomb of a few KB to ~110 KB), and ``_claiming`` rewrites a tiny PNG's header to
declare another size. Nothing in these tests allocates the images the headers describe.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageFile, PngImagePlugin

from imagineer_worker import images
from imagineer_worker.images import (
    FORMATS,
    MAX_IMAGE_PIXELS,
    ImageInfo,
    ImageTooLarge,
    InvalidImage,
    check_size,
    inspect_image,
    open_image,
)
from imagineer_worker.testing.fixture_site import make_large_png, make_png

WIDTH = 4096
AT_LIMIT = (WIDTH, MAX_IMAGE_PIXELS // WIDTH)  # exactly the limit while it is a multiple of 4096
OVER_LIMIT = (WIDTH, MAX_IMAGE_PIXELS // WIDTH + 1)  # one row more


def _claiming(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR rewritten (checksum included) to declare ``width x height``."""
    assert png[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + png[33:]


def _encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 0 if mode in ("1", "L", "P") else (10, 20, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any verify() or load() of a PNG: a refused image must not reach either."""
    calls: list[str] = []

    def spy(name: str, original: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "verify", spy("verify", PngImagePlugin.PngImageFile.verify))
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy("load", ImageFile.ImageFile.load))
    return calls


def test_the_limit_is_explicit_and_below_pillows_default() -> None:
    # Pillow only warns up to twice its default: the worker's own limit must be the one that bites.
    assert Image.MAX_IMAGE_PIXELS is not None
    assert MAX_IMAGE_PIXELS == 33_554_432 < Image.MAX_IMAGE_PIXELS
    assert AT_LIMIT[0] * AT_LIMIT[1] == MAX_IMAGE_PIXELS
    assert OVER_LIMIT[0] * OVER_LIMIT[1] > MAX_IMAGE_PIXELS


def test_image_at_the_limit_is_accepted_and_decodes() -> None:
    blob = make_large_png(*AT_LIMIT)
    assert inspect_image(blob) == ImageInfo("PNG", "png", *AT_LIMIT, "1")
    with open_image(blob) as img:  # a caller may decode what the gate let through
        img.load()
        assert img.getextrema() == (0, 0)


def test_image_just_over_the_limit_is_refused_from_its_header(no_decoding: list[str]) -> None:
    with pytest.raises(ImageTooLarge) as info:
        inspect_image(make_large_png(*OVER_LIMIT))
    width, height = OVER_LIMIT
    assert (info.value.width, info.value.height, info.value.limit) == (width, height, MAX_IMAGE_PIXELS)
    assert str(info.value) == (
        f"image is {width}x{height} pixels ({width * height:,}), over the limit of 33,554,432 pixels "
        "per image (decompression-bomb guard); refused before decoding")
    assert isinstance(info.value, InvalidImage) and isinstance(info.value, ValueError)
    assert no_decoding == []


def test_header_claiming_30000_squared_is_refused_before_verify_or_load(no_decoding: list[str]) -> None:
    # Pillow's own guard refuses this one inside Image.open (over twice its limit); the error still
    # names the declared size, read from the header alone.
    crafted = _claiming(make_png((1, 2, 3), size=8), 30_000, 30_000)
    with pytest.raises(ImageTooLarge, match=r"^image is 30000x30000 pixels \(900,000,000\), over the limit "
                                            r"of 33,554,432 pixels"):
        inspect_image(crafted)
    with pytest.raises(ImageTooLarge), open_image(crafted):
        pytest.fail("open_image yielded a bomb")
    assert no_decoding == []


def test_real_bomb_is_refused() -> None:
    bomb = make_large_png(30_000, 30_000)  # ~110 KB that decodes to 900 M pixels
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge) as info:
        inspect_image(bomb)
    assert (info.value.width, info.value.height) == (30_000, 30_000)


def test_pillow_decompression_bomb_warning_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # With Pillow's limit at 1000 pixels, 40x40 = 1600 is in its "only warn" band (1x-2x).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    blob = _encoded("PNG", size=(40, 40))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLarge) as info:
            inspect_image(blob, limit=10_000)
    assert (info.value.width, info.value.height, info.value.limit) == (40, 40, 1000)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pillow_decompression_bomb_error_names_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLarge, match=r"^image is 50x50 pixels \(2,500\), over the limit of 1,000"):
        inspect_image(_encoded("GIF", "P", (50, 50)), limit=10_000)


def test_bomb_raised_while_decoding_becomes_image_too_large() -> None:
    # A GIF frame or TIFF tile larger than the image trips Pillow's guard only at load time.
    with pytest.raises(ImageTooLarge, match=r"^image is 8x8 pixels"), open_image(make_png((1, 2, 3), 8)):
        raise Image.DecompressionBombError("tile too large")


def test_check_size() -> None:
    check_size(100, 100, limit=10_000)
    with pytest.raises(ImageTooLarge, match=r"^image is 101x100 pixels \(10,100\), over the limit of 10,000"):
        check_size(101, 100, limit=10_000)


@pytest.mark.parametrize(("fmt", "mode", "extension"), [
    ("PNG", "RGB", "png"), ("JPEG", "RGB", "jpg"), ("GIF", "P", "gif"), ("WEBP", "RGB", "webp"),
    ("BMP", "RGB", "bmp"), ("TIFF", "RGB", "tiff"), ("PNG", "L", "png"),
])
def test_allowed_formats_are_inspected_without_change(fmt: str, mode: str, extension: str) -> None:
    assert FORMATS[fmt] == extension
    assert inspect_image(_encoded(fmt, mode)) == ImageInfo(fmt, extension, 12, 10, mode)


@pytest.mark.parametrize(("blob", "message"), [
    (_encoded("PPM"), "not a valid image: cannot identify image file"),  # valid, but off the list
    (_encoded("ICO", size=(16, 16)), "not a valid image: cannot identify image file"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a valid image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", "not a valid image"),  # never Ghostscript
    (make_png((9, 9, 9), 48)[:60], "not a valid image"),  # truncated
    (b"", "not a valid image"),
])
def test_other_bytes_are_invalid_images(blob: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message) as info:
        inspect_image(blob)
    assert not isinstance(info.value, ImageTooLarge)


def test_soft_time_limit_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(images.Image, "open", interrupted)
    with pytest.raises(SoftTimeLimitExceeded):
        inspect_image(b"\x89PNG")
