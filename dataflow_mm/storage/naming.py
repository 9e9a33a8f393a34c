"""Output file names from content: the one file-naming rule of the cache.

Names carry a hash of what produced the file, so two runs (or two rows with the same stem) never
overwrite each other's output, and a re-run of the same work reuses the same name.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

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
