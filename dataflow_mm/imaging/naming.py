"""Output file names from content, and atomic image writes.

Names carry a hash of what produced the file, so two runs (or two rows with the same stem) never
overwrite each other's output, and a re-run of the same work reuses the same name. Writes go
through the project's one atomic writer (``storage.atomic.AtomicFile``), so a crash never leaves a
half-written image under the final name, and the temporary file is removed on error.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from PIL import Image

from dataflow_mm.storage.atomic import AtomicFile

MAX_STEM_CHARS = 60
FALLBACK_STEM = "image"
_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


def safe_stem(stem: str) -> str:
    """Last path component of ``stem`` reduced to unicode letters, digits, ``-`` and ``_`` (<= 60 chars).

    Other characters become ``_`` (runs collapsed); ``../../x`` gives ``x``; empty gives ``"image"``.
    """
    last = unicodedata.normalize("NFC", str(stem)).replace("\\", "/").rstrip("/").split("/")[-1]
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in last)
    cleaned = re.sub(r"_+", "_", cleaned).strip("_-")[:MAX_STEM_CHARS].strip("_-")
    return cleaned or FALLBACK_STEM


def content_name(stem: str, payload: bytes | str, suffix: str) -> str:
    """``"{safe_stem}_{sha256(payload)[:16]}{suffix}"``: a file name fixed by the content it stands for."""
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    return digest_name(stem, hashlib.sha256(data).hexdigest(), suffix)


def digest_name(stem: str, sha256_hex: str, suffix: str) -> str:
    """``content_name`` for a payload whose sha256 the caller has already computed."""
    if not _SUFFIX_RE.match(suffix):
        raise ValueError(f"suffix must look like '.jpg' (a dot and 1-10 letters/digits), got {suffix!r}")
    return f"{safe_stem(stem)}_{sha256_hex[:16]}{suffix}"


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
