"""Content hash of a file, read in blocks (shared by the manifest and the media stamps).

A writer that already hashed the bytes it wrote (a drawn image, named by its hash) tells
``remember_sha256``; a later ``file_sha256`` of that file in the same process (the next step's media
stamp) then reads nothing while the file's size and mtime_ns are still those written: the media
stamps' own rule for "unchanged". The memory holds the latest ``_REMEMBERED`` files only.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

_HASH_BLOCK = 1 << 20
_REMEMBERED = 8192  # files: a few chunks' drawn images, so memory stays flat on any table
_known: OrderedDict[str, tuple[int, int, str]] = OrderedDict()
_known_lock = threading.Lock()


def remember_sha256(path: str | os.PathLike, size: int, mtime_ns: int, sha256: str) -> None:
    """Record that the file at ``path`` with this size and mtime_ns has content hash ``sha256``."""
    key = os.path.abspath(path)
    with _known_lock:
        _known[key] = (size, mtime_ns, sha256)
        _known.move_to_end(key)
        while len(_known) > _REMEMBERED:
            _known.popitem(last=False)


def remembered_sha256(path: str | os.PathLike, size: int, mtime_ns: int) -> str | None:
    """The hash its writer remembered for the file at ``path`` while it still has this size and mtime_ns."""
    with _known_lock:
        known = _known.get(os.path.abspath(path))
    return known[2] if known is not None and known[:2] == (size, mtime_ns) else None


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file, read in blocks (or remembered from its writer, see the module docstring)."""
    try:
        info = os.stat(path)
        remembered = remembered_sha256(path, info.st_size, info.st_mtime_ns)
    except OSError:
        remembered = None
    return remembered if remembered is not None else read_sha256(path)


def read_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
