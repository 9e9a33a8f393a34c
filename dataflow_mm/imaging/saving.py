"""Atomic image writes: the format from the file's suffix, through the project's one atomic writer.

Writes go through ``storage.atomic.AtomicFile``, so a crash never leaves a half-written image under
the final name, and the temporary file is removed on error.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from dataflow_mm.storage.atomic import AtomicFile


def image_format_for(path: str | os.PathLike) -> str:
    """Pillow format name (``"JPEG"``, ``"PNG"``...) for the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"cannot tell the image format from the suffix {suffix!r} of '{path}'")
    return fmt


def save_image_atomic(image: Image.Image, path: str | os.PathLike, quality: int = 95) -> Path:
    """Write ``image`` to ``path`` atomically (``AtomicFile``: temp file beside it, then renamed).

    The format comes from the suffix; JPEG output is converted to RGB. The parent directory is
    created if missing. On any error the temporary file is removed and the error re-raised.
    """
    target = Path(path)
    fmt = image_format_for(target)
    if fmt == "JPEG" and image.mode != "RGB":
        image = image.convert("RGB")
    params = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with AtomicFile(target) as atomic, atomic.tmp.open("wb") as handle:
        image.save(handle, format=fmt, **params)
    return target
