"""Load images safely: one RGB, display-oriented image or one specific row error.

Boxes everywhere in dataflow-mm refer to the image **as displayed**, i.e. after the EXIF
orientation is applied; :func:`load_image` and :func:`image_size` both report that orientation.

Size guard: the pixel count declared in the header is checked against ``max_pixels`` before any
pixel is decoded (``Image.open`` is lazy). ``DEFAULT_MAX_PIXELS`` is 100 MP (e.g. 10000x10000),
above any camera photo and far below what would exhaust memory. Independently, Pillow refuses to
open images above ``2 * Image.MAX_IMAGE_PIXELS`` (~179 MP) and warns between ~89 and ~179 MP;
that refusal is reported as :class:`ImageTooLargeError` too, even with ``max_pixels=None``.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dataflow_mm.common.errors import ImageDecodeError, ImageLoadError, ImageNotFoundError, ImageTooLargeError

DEFAULT_MAX_PIXELS = 100_000_000
ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image
Reduction = Callable[[tuple[int, int]], tuple[int, int] | None]  # a JPEG's stored size -> a size to decode at

# Errors Pillow raises on corrupt or truncated data (SyntaxError and struct errors come from plugins).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_image(
    source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, reduce: Reduction | None = None
) -> Image.Image:
    """Decode ``source`` (path, bytes or PIL image) into a new RGB image as displayed.

    EXIF orientation is applied; alpha is composited over white; palette, 16-bit, float,
    grayscale and CMYK images are converted to 8-bit RGB. Raises ``ImageNotFoundError``,
    ``ImageDecodeError`` or ``ImageTooLargeError`` (row errors) with the source in the message.
    ``reduce``: given a JPEG's stored size, a half, quarter or eighth of it to decode at instead (libjpeg
    decodes those directly, in a fraction of the time), or None for the whole image; other formats and
    PIL images are not reduced (``serving.jpeg_reduction`` makes one for a model's processor).
    """
    if isinstance(source, Image.Image):
        label = f"<PIL image {source.mode} {source.width}x{source.height}>"
        _check_pixels(source.size, label, max_pixels)
        _force_load(source, label)
        return _finish(source, label)
    fp, label = _open_source(source)
    with _open_lazy(fp, label) as image:
        _check_pixels(image.size, label, max_pixels)
        if reduce is not None and image.format == "JPEG":
            smaller = reduce(image.size)
            if smaller is not None:
                image.draft(None, smaller)
        _force_load(image, label)
        return _finish(image, label)


def image_size(source: ImageSource) -> tuple[int, int]:
    """``(W, H)`` as displayed, read from the header only (no pixel decoding).

    Width and height are swapped when the EXIF orientation is a 90/270 degree rotation. A PNG's EXIF
    may follow its pixel data: its chunks are then skipped over, not decoded (Pillow's ``getexif``
    would decode every pixel to reach it: 9 ms for a 1024x768 photo, against 0.05 ms for a JPEG).
    """
    if isinstance(source, Image.Image):
        return _displayed_size(source)
    fp, label = _open_source(source)
    with _open_lazy(fp, label) as image:
        if image.format == "PNG" and "exif" not in image.info and image.fp is not None:
            return _oriented(image.size, _orientation_of(_png_exif_after_pixels(image.fp)))
        return _displayed_size(image)


def _open_source(source: Any) -> tuple[IO[bytes] | Path, str]:
    """A path or in-memory stream for Pillow, plus a label naming the source in messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = f"<{len(data)} bytes in memory>"
        if not data:
            raise ImageDecodeError(f"image data is empty (0 bytes): {label}")
        return io.BytesIO(data), label
    if source is None:
        raise ImageNotFoundError("no image given (the image field is None)")
    if not isinstance(source, (str, os.PathLike)):
        raise ImageLoadError(
            f"unsupported image source type {type(source).__name__}: expected a path, bytes or a PIL image"
        )
    if isinstance(source, str) and not source.strip():
        raise ImageNotFoundError("image path is an empty string")
    path = Path(source)
    label = f"'{path}'"
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageNotFoundError(f"image file not found: {label}") from None
    except (OSError, ValueError) as exc:  # name too long, NUL byte, lone surrogate, loop of links...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ImageNotFoundError(f"image path cannot be opened ({reason}): {label}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageNotFoundError(f"image path is a directory, not a file: {label}")
    size = info.st_size
    if size == 0:
        raise ImageDecodeError(f"image file is empty (0 bytes): {label}")
    return path, label


def _open_lazy(fp: IO[bytes] | Path, label: str) -> Image.Image:
    """``Image.open`` (header only), with Pillow's errors turned into row errors."""
    try:
        return Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(label, exc) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not an image or unsupported format: {label}") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"cannot read image file {label}: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot read image header of {label}: {exc}") from exc


def _bomb_error(label: str, exc: Exception) -> ImageTooLargeError:
    return ImageTooLargeError(f"image {label} refused by Pillow's decompression-bomb guard: {exc}")


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image {label} declares {width}x{height} = {width * height} pixels, "
            f"above the limit of {max_pixels} (max_pixels)"
        )


def _force_load(image: Image.Image, label: str) -> None:
    """Decode every pixel now, so truncated or corrupt data fails here and not later."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise _bomb_error(label, exc) from exc
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot decode image {label}: {exc}") from exc


def _finish(image: Image.Image, label: str) -> Image.Image:
    """Orient as displayed, then convert to a new 8-bit RGB image."""
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # malformed EXIF blocks raise a variety of errors
        raise ImageDecodeError(f"invalid EXIF orientation data in {label}: {exc}") from exc
    rgb = to_rgb(oriented)
    return rgb.copy() if rgb is image else rgb


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # unreadable EXIF: the stored orientation is all we know
        orientation = None
    return _oriented(image.size, orientation)


def _oriented(size: tuple[int, int], orientation: int | None) -> tuple[int, int]:
    width, height = size
    return (height, width) if orientation in _ROTATED_ORIENTATIONS else (width, height)


def _orientation_of(exif: bytes | None) -> int | None:
    """The EXIF orientation in raw EXIF data (a TIFF header and its entries), None when absent or unreadable."""
    if not exif:
        return None
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        return parsed.get(_EXIF_ORIENTATION)
    except Exception:  # unreadable EXIF, as in _displayed_size
        return None


def _png_exif_after_pixels(fp: IO[bytes]) -> bytes | None:
    """The data of a PNG's ``eXIf`` chunk, found by reading each chunk's header and seeking past its data."""
    try:
        fp.seek(len(_PNG_SIGNATURE))
        while True:
            header = fp.read(8)
            if len(header) < 8:
                return None
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"eXIf":
                return fp.read(length)
            if kind == b"IEND":
                return None
            fp.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    except (OSError, ValueError):
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of ``image`` (alpha over white, high bit depths scaled, not clipped)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _over_white(image.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    return image.convert("RGB")


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16/32-bit integer or float grayscale to 0–255.

    Integers within 0..65535 are treated as 16-bit (``v / 257``, so 65535 -> 255); floats within
    0..1 are scaled by 255; anything else is min–max stretched.
    """
    data = array.astype(np.float64)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if np.issubdtype(array.dtype, np.integer) and low >= 0 and high <= 65535:
        scaled = data / 257.0
    elif np.issubdtype(array.dtype, np.floating) and low >= 0 and high <= 1:
        scaled = data * 255.0
    elif high > low:
        scaled = (data - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(data)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
