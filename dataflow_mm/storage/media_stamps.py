"""Media stamps: the content of the image files a step read, so a replaced image makes the step run again.

A table holds image *paths*; the step's input hash does not change when a file behind a path does.
So each chunk's done-marker records, before the chunk is processed, a stamp per media file it
refers to: ``[size, mtime_ns, sha256]`` (``None`` when the file could not be read: missing, a folder,
a name the OS refuses). The step's manifest keeps the union. A chunk or a step is current only while
every stamp still holds: equal size and mtime_ns mean unchanged; a changed size means changed; an equal
size with another mtime_ns is settled by the content hash (a ``touch`` alone redoes nothing). A file
that appears where one was missing counts as changed too.

Cells that are not local paths (URLs, ``data:`` URIs, bytes, structs) are not stamped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dataflow_mm.storage.hashing import read_sha256, remembered_sha256
from dataflow_mm.storage.media import resolve_media_path

Stamp = list[Any] | None  # [size, mtime_ns, sha256]
_POOL_FROM = 16  # files in one call from which they are hashed on several threads


def _local_paths(value: Any) -> Iterable[str]:
    """The path strings in one cell (a path, or a list of paths); URLs and other forms are skipped."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None and hasattr(value, "ndim"):
        value = tolist()
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, str) and item.strip() and "://" not in item and not item.startswith("data:"):
            yield item


def _resolve(value: str, media_root: Path | None) -> str | None:
    try:
        return os.path.abspath(resolve_media_path(value, media_root))
    except (ValueError, OSError):
        return None


def _stat_stamp(path: str) -> Stamp:
    """``[size, mtime_ns, sha256]`` from one ``stat``: the hash its writer remembered, else None (still to
    read); the whole stamp is None when the file cannot be read."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return [info.st_size, info.st_mtime_ns, remembered_sha256(path, info.st_size, info.st_mtime_ns)]


def _hashed(path: str, partial: Stamp) -> Stamp:
    """``partial`` with its content hash read from the file where its writer did not remember one."""
    if partial is None or partial[2] is not None:
        return partial
    try:
        return [partial[0], partial[1], read_sha256(path)]
    except (OSError, ValueError):
        return None


def stamp(path: str) -> Stamp:
    """``[size, mtime_ns, sha256]`` of a regular file, or None when it cannot be read."""
    return _hashed(path, _stat_stamp(path))


def media_stamps(columns: Iterable[Iterable[Any]], media_root: Path | None) -> dict[str, Stamp]:
    """A stamp for every distinct local file named in ``columns`` (each an iterable of cells)."""
    paths = {
        resolved
        for cells in columns
        for cell in cells
        for value in _local_paths(cell)
        if (resolved := _resolve(value, media_root))
    }
    stamps = {path: _stat_stamp(path) for path in sorted(paths)}  # drawn images: hash remembered, no read
    unread = [path for path, item in stamps.items() if item is not None and item[2] is None]
    if len(unread) < _POOL_FROM:
        stamps.update((path, _hashed(path, stamps[path])) for path in unread)
    else:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # hashing frees the GIL
            stamps.update(zip(unread, pool.map(lambda path: _hashed(path, stamps[path]), unread), strict=True))
    return stamps


def changed_media(stamps: dict[str, Stamp]) -> list[str]:
    """The recorded files whose content is no longer what was stamped (see the module's rule)."""
    changed = []
    for path, old in stamps.items():
        try:
            info = os.stat(path)
            regular = stat.S_ISREG(info.st_mode)
        except (OSError, ValueError):
            regular = False
        if old is None or not regular:
            if old is not None or regular:
                changed.append(path)
            continue
        size, mtime_ns, sha = old
        if info.st_size == size and info.st_mtime_ns == mtime_ns:
            continue
        now = stamp(path)
        if info.st_size != size or now is None or now[2] != sha:
            changed.append(path)
    return changed
