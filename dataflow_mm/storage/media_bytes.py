"""Image bytes stored once under the media cache, named by their content (below ``media`` and ``downloads``)."""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path

from dataflow_mm.storage.atomic import write_bytes_atomic
from dataflow_mm.storage.naming import safe_stem

_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def fallback_cache_dir() -> Path:
    """Where media go when an operator runs outside a storage (direct ``process`` calls)."""
    return Path(tempfile.gettempdir()) / "dataflow_mm_media"


def suffix_of(data: bytes) -> str:
    """File suffix for image bytes, from their header (``.bin`` when Pillow does not know them)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return _SUFFIXES.get(str(image.format), ".bin")
    except Exception:  # not an image: the loader reports it as a row error later
        return ".bin"


def store_bytes(data: bytes, cache_dir: Path | None, name_hint: str | None = None) -> Path:
    """Write image bytes once to ``{cache_dir}/{stem}_{sha256[:16]}{suffix}`` and return that path."""

    data = bytes(data)
    folder = Path(cache_dir) if cache_dir is not None else fallback_cache_dir()
    stem = safe_stem(Path(name_hint).stem if name_hint else "image")
    target = folder / f"{stem}_{hashlib.sha256(data).hexdigest()[:16]}{suffix_of(data)}"
    if not target.exists():
        write_bytes_atomic(data, target)
    return target
