"""One run per cache folder: an OS-level lock on ``{cache_path}/.dataflow_mm.lock``.

Two runs writing the same step files lose rows (each assembles only its own chunks), so a
cache folder is held by one process at a time. The lock is ``fcntl.flock`` on an open file:
the kernel releases it when the process ends, however it ends (``kill -9`` included), so a
crashed run never leaves the folder locked. The holder writes its pid into the file so that a
second run can say who holds it. Within one process the lock is re-entrant (a pipeline holds
it for the whole run; each step takes it again).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dataflow_mm.errors import StorageError
from dataflow_mm.logger import get_logger

log = get_logger("storage")

LOCK_FILE_NAME = ".dataflow_mm.lock"

_held: dict[str, list[int]] = {}  # lock file (real path) -> [fd, depth], for this process
_guard = threading.Lock()


class CacheLockedError(StorageError):
    """Another run holds the cache folder."""


def lock_file_of(cache_path: str | os.PathLike) -> Path:
    """The lock file of a cache folder."""
    return Path(cache_path) / LOCK_FILE_NAME


def _holder_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def open_regular_file(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symlink at ``path`` and returns only a regular file's descriptor.

    A link planted at a file the cache writes in place (``ln -s ~/.bashrc cache/.dataflow_mm.lock``)
    would otherwise have that file truncated; a FIFO or device is refused as well (``O_NONBLOCK``:
    opening a FIFO does not hang). Raises ``StorageError`` naming the path.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise StorageError(
                f"'{path}' is a symbolic link: the cache never writes through a link; remove it and run again"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StorageError(f"'{path}' is not a regular file: the cache never writes into it; remove it and run again")
    return fd


def _acquire(path: Path, wait: bool) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_regular_file(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = _holder_pid(fd)
            who = f"pid {pid}" if pid else "a process whose pid is not recorded yet"
            if not wait:
                raise CacheLockedError(
                    f"cache path '{path.parent}' is in use by another run ({who}); wait for it to end, "
                    "or pass --wait_for_lock (FileStorage(wait_for_lock=True)) to queue behind it"
                ) from None
            log.info(f"cache path '{path.parent}' is in use by another run ({who}); waiting for it to end")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def cache_lock(cache_path: str | os.PathLike, wait: bool = False) -> Iterator[None]:
    """Hold the cache folder's lock for the block (re-entrant within this process).

    Raises ``CacheLockedError`` (a user error: one line, exit 2) when another process holds it,
    unless ``wait``, which blocks until that process ends or releases it.
    """
    path = lock_file_of(cache_path)
    try:
        key = str(path.parent.resolve() / LOCK_FILE_NAME)
    except OSError:
        key = os.path.abspath(path)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        try:
            fd = _acquire(path, wait)
        except OSError as exc:
            raise StorageError(f"cannot lock cache path '{path.parent}': {exc.strerror or exc}") from exc
        with _guard:
            _held[key] = entry = [fd, 1]
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            release = entry[1] == 0
            if release:
                del _held[key]
        if release:
            os.close(entry[0])  # closing the only descriptor releases the flock
