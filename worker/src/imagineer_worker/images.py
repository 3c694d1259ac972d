"""Opening untrusted image bytes safely: one format allow-list and one pixel limit for the worker.

Scraped images come from anywhere, and a few kilobytes of PNG can declare 50,000 x 50,000 pixels:
decoding it would need gigabytes and the OOM killer would take the worker child (and, with
``task_reject_on_worker_lost``, requeue the same bomb for the next child). Pillow's own guard,
``Image.MAX_IMAGE_PIXELS`` (~89.5 M pixels), only *warns* up to twice that number, and a warning
does not stop anything. So every image the scraping and labeling tasks touch goes through
:func:`open_image` / :func:`inspect_image`, which

* only let the allow-listed Pillow plugins (:data:`FORMATS`) near the bytes (no EPS/Ghostscript,
  no exotic decoders);
* compare the header's width x height with :data:`MAX_IMAGE_PIXELS` right after ``Image.open``
  (which is lazy: the size is known, nothing is decoded) and before any ``verify()``, ``load()``
  or ``convert()``;
* treat Pillow's ``DecompressionBombWarning`` as an error, like its ``DecompressionBombError``;
* raise :class:`ImageTooLarge` naming the width, the height and the limit, or
  :class:`InvalidImage` for anything else that is not an acceptable image.

The warning filter is process-wide while an image is open (``warnings.catch_warnings`` is not
thread-safe before Python 3.14): fine in the prefork pool, where a child runs one task at a time.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageFile

MAX_IMAGE_PIXELS: Final[int] = 2**25
"""The most pixels (width x height) an image may declare: 33,554,432, e.g. 8192 x 4096.

Why this number: it is well above anything a training set needs (training crops to
``resolution`` = 512 by default, 1024 for SDXL-sized runs: the limit is 128x and 32x those crops)
and still admits an 8K UHD frame (7680 x 4320 = 33.2 M) or a 32-megapixel photo. It is far below
what a worker can afford to decode: at Pillow's widest 4 bytes per pixel (RGBA, CMYK, I, F) the
largest allowed image decodes to 128 MiB, half of one labeling child's share of the chart's memory
limit (``workers.labeling.resources.limits.memory`` 1Gi / concurrency 4 = 256 MiB) and an eighth
of a scraping child's (2Gi / 2 = 1 GiB). Pillow's default (89.5 M pixels, 358 MiB in RGBA, and
only a warning up to 179 M pixels = 716 MiB) would let one image exhaust a labeling child and
two of them a scraping pod.
"""

FORMATS: Final[Mapping[str, str]] = MappingProxyType({
    "JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff",
})
"""Pillow plugins allowed near untrusted bytes (common raster formats only), with the file
extension a scraped image of that format is stored under."""

_BOMBS = (Image.DecompressionBombWarning, Image.DecompressionBombError)


class InvalidImage(ValueError):  # noqa: N818 - reads as the verdict on the bytes
    """The bytes are not an image this worker accepts: undecodable, or a format off the allow-list.

    Content, not a transient failure: the same bytes fail the same way on every attempt.
    """


class ImageTooLarge(InvalidImage):
    """The header declares more pixels than the limit: refused before anything is decoded."""

    def __init__(self, width: int | None, height: int | None, limit: int, detail: str = "") -> None:
        self.width, self.height, self.limit = width, height, limit
        if width is not None and height is not None:
            what = f"image is {width}x{height} pixels ({width * height:,})"
        else:  # only when Pillow refused a header that our own parse could not size either
            what = f"image declares too many pixels ({detail})"
        super().__init__(f"{what}, over the limit of {limit:,} pixels per image "
                         "(decompression-bomb guard); refused before decoding")


@dataclass(frozen=True)
class ImageInfo:
    """What the header and a structural ``verify()`` tell about an image, without decoding it."""

    format: str  # Pillow's name: "PNG", "JPEG", ...
    extension: str  # the file extension it is stored under: "png", "jpg", ...
    width: int
    height: int
    mode: str  # Pillow's mode: "RGB", "L", "1", ...


def check_size(width: int, height: int, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Raise :class:`ImageTooLarge` when ``width x height`` exceeds ``limit``.

    Separate from opening so that any code that learns a size (a header, a manifest) can apply
    the same rule with the same message.
    """
    if width * height > limit:
        raise ImageTooLarge(width, height, limit)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height as the allow-listed plugins read them, without Pillow's bomb check.

    Only used to name the size in the error when ``Image.open`` itself refused the header (more
    than Pillow's limit): constructing a plugin's image class parses the header and decodes nothing.
    """
    Image.init()
    for name in FORMATS:
        factory, accept = Image.OPEN.get(name, (None, None))
        if factory is None:
            continue
        try:
            verdict = accept(data[:16]) if accept is not None else True
            if verdict is not True:  # False, or a string explaining why not
                continue
            with factory(io.BytesIO(data), "") as img:
                return img.size
        except SoftTimeLimitExceeded:
            raise
        except Exception:  # any parse failure: try the next plugin
            continue
    return None


def _refused(data: bytes, limit: int, exc: Exception) -> ImageTooLarge:
    """The :class:`ImageTooLarge` for a header Pillow's own guard refused while opening."""
    pillow = Image.MAX_IMAGE_PIXELS
    effective = min(limit, pillow) if pillow else limit
    size = _header_size(data)
    if size is None:
        return ImageTooLarge(None, None, effective, str(exc))
    return ImageTooLarge(*size, effective)


@contextmanager
def open_image(data: bytes, *, limit: int = MAX_IMAGE_PIXELS) -> Iterator[ImageFile.ImageFile]:
    """Open ``data`` lazily with the allowed plugins; refuse it before decoding when too large.

    Inside the ``with`` block the caller may ``verify()``, ``load()`` or ``convert()``: the size is
    already checked, and a ``DecompressionBombWarning`` or ``DecompressionBombError`` Pillow raises
    while decoding (a GIF frame or TIFF tile larger than the image) still becomes
    :class:`ImageTooLarge`. Other errors inside the block propagate unchanged.

    Raises :class:`ImageTooLarge` or :class:`InvalidImage`; lets ``SoftTimeLimitExceeded`` through.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
        except SoftTimeLimitExceeded:
            raise
        except _BOMBS as exc:
            raise _refused(data, limit, exc) from None
        except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
            raise InvalidImage(f"not a valid image: {exc or type(exc).__name__}") from None
        with img:
            if img.format not in FORMATS:  # e.g. the JPEG plugin hands back "MPO"
                raise InvalidImage(f"unsupported image format {img.format or 'unknown'}")
            check_size(*img.size, limit)
            try:
                yield img
            except _BOMBS as exc:
                raise ImageTooLarge(*img.size, Image.MAX_IMAGE_PIXELS or limit) from exc


def inspect_image(data: bytes, *, limit: int = MAX_IMAGE_PIXELS) -> ImageInfo:
    """Check ``data`` is an allowed, structurally sound image within the pixel limit.

    ``verify()`` checks the file's structure (chunk checksums, markers) without decoding the
    pixels, and runs only after the size check, so a bomb costs its header parse and nothing more.
    Raises :class:`ImageTooLarge` or :class:`InvalidImage`; lets ``SoftTimeLimitExceeded`` through.
    """
    with open_image(data, limit=limit) as img:
        fmt, (width, height), mode = img.format or "", img.size, img.mode
        try:
            img.verify()
        except SoftTimeLimitExceeded:
            raise
        except _BOMBS:
            raise
        except Exception as exc:
            raise InvalidImage(f"not a valid image: {exc or type(exc).__name__}") from None
    return ImageInfo(format=fmt, extension=FORMATS[fmt], width=width, height=height, mode=mode)
