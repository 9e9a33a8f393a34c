"""Content hash of a file, read in blocks (shared by the manifest and the media stamps)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HASH_BLOCK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
