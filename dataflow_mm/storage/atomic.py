"""The one atomic writer: every file the project writes (step files, manifests, markers, extra
outputs, drawn images) goes through ``AtomicFile``.

A write goes to a temp file with a unique name in the target's folder
(``.<name>.<pid>.<random>.tmp``), created with mode 0666 so the user's umask decides the final
mode (``mkstemp`` would force 0600); on commit the file is fsynced, renamed over the target and
the folder fsynced, so readers see either the old file or the whole new one, even after a power
loss. On error the temp file is removed. A kill leaves the temp file behind: ``remove_stale_temps``
deletes those of dead processes for one target when its step runs again.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import orjson

_TEMP_SUFFIX = ".tmp"


def temp_name(target: Path) -> str:
    """A unique temp file name for ``target`` (same folder): ``.<name>.<pid>.<hex>.tmp``."""
    return f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"


def _temp_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[0-9a-f]{{8}}{re.escape(_TEMP_SUFFIX)}$")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class CommitOnExit:
    """A writer used as a context manager: a clean exit commits, an exception discards."""

    def commit(self) -> Path:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class AtomicFile(CommitOnExit):
    """A temp file beside ``path`` that becomes ``path`` on ``commit`` (or vanishes on ``discard``).

    Write to ``.tmp`` (a Path) by any means; as a context manager, a clean exit commits and an
    exception discards.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(temp_name(self.path))
        # 0o666 & ~umask: the mode a plain open() would give, so step files follow the user's umask.
        os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))

    def commit(self, synced: bool = False, sync_folder: bool = True) -> Path:
        """fsync the temp file (unless the writer did: ``synced``), rename it over the target, fsync the folder.

        ``sync_folder=False`` leaves the folder's fsync to the caller, who makes many renames in
        one folder durable with one ``fsync_folder`` (drawn images: once per chunk, not per image).
        """
        try:
            if not synced:
                with self.tmp.open("rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        if sync_folder:
            fsync_folder(self.path.parent)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def write_json_lines_atomic(target: Path, values: Iterable[Any], drop_if_empty: bool = False) -> str:
    """Write each value as one compact JSON line (orjson), a line at a time, atomically; the file's sha256.

    ``drop_if_empty``: with no value there is no file (an earlier one goes too) and "" is returned. An
    exception raised while ``values`` is iterated leaves nothing behind and propagates.
    """
    digest = hashlib.sha256()
    atomic = AtomicFile(target)
    try:
        with atomic.tmp.open("wb") as handle:
            for value in values:
                line = orjson.dumps(value) + b"\n"
                digest.update(line)
                handle.write(line)
            empty = handle.tell() == 0
    except BaseException:
        atomic.discard()
        raise
    if empty and drop_if_empty:  # nothing to keep, nor to sync
        atomic.discard()
        target.unlink(missing_ok=True)
        return ""
    atomic.commit()
    return digest.hexdigest()


def write_bytes_atomic(data: bytes, path: str | os.PathLike, sync_folder: bool = True) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The data is fsynced through the handle that wrote it (one open, not two); ``sync_folder``
    as in ``AtomicFile.commit``.
    """
    target = AtomicFile(path)
    try:
        with target.tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        target.discard()
        raise
    return target.commit(synced=True, sync_folder=sync_folder)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Delete the temp files ``AtomicFile`` left for ``target`` in runs that were killed.

    Only names of this writer's pattern for this very target are considered, and only those whose
    writer process is gone (a live process, e.g. another run, keeps its temp file). Returns what
    was removed.
    """
    target = Path(target)
    return _remove_dead_writers_temps(target.parent, _temp_pattern(target))


def remove_stale_temps_in(folder: str | os.PathLike, suffix: str) -> list[Path]:
    """Delete the temp files ``AtomicFile`` left in ``folder`` for any target named ``*{suffix}`` by killed runs.

    For writers whose target names are known only once written (drawn images are named by their
    bytes: ``.<stem>.jpg.<pid>.<hex>.tmp``); as ``remove_stale_temps``, a live writer's file is kept.
    """
    pattern = re.compile(rf"^\..+{re.escape(suffix)}\.(\d+)\.[0-9a-f]{{8}}{re.escape(_TEMP_SUFFIX)}$")
    return _remove_dead_writers_temps(Path(folder), pattern)


def _remove_dead_writers_temps(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Delete the files of ``folder`` matching ``pattern`` (group 1: the writer's pid) whose writer is dead."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux): one call makes every written file of a filesystem durable."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()


def sync_data(paths: Sequence[Path]) -> None:
    """Make the data of the files ``paths`` durable: one ``syncfs`` per folder's filesystem where the OS
    has it (Linux), else one fsync per file. Raises OSError when the data could not be written."""
    if _SYNCFS is not None:
        devices: dict[int, Path] = {}
        for path in paths:
            devices.setdefault(os.stat(path.parent).st_dev, path.parent)
        for folder in devices.values():
            fd = os.open(folder, os.O_RDONLY)
            try:
                if _SYNCFS(fd) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"syncfs failed: {os.strerror(error)}", str(folder))
            finally:
                os.close(fd)
        return
    for path in paths:
        with path.open("rb+") as handle:
            os.fsync(handle.fileno())


class DurableBatch:
    """New files made durable together, for a writer of many small files (drawn images: one chunk).

    ``add(tmp, target)`` takes a temp file already written (not fsynced); ``commit`` syncs all their
    data at once (``sync_data``), then renames each over its target and fsyncs each folder once. A kill
    before ``commit`` returns leaves at worst temp files and renamed targets whose data is durable: no
    target ever names a partly written file, and the caller records the work as done (a chunk marker)
    only after ``commit``. Safe to ``add`` from several threads.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self._lock = threading.Lock()

    def add(self, tmp: Path, target: Path) -> None:
        with self._lock:
            self._pending.append((Path(tmp), Path(target)))

    def commit(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            sync_data([tmp for tmp, _ in pending])
            for tmp, target in pending:
                os.replace(tmp, target)
        except BaseException:
            _remove_temps(pending)
            raise
        for folder in dict.fromkeys(target.parent for _, target in pending):
            fsync_folder(folder)

    def discard(self) -> None:
        """Remove the temp files not committed."""
        with self._lock:
            pending, self._pending = self._pending, []
        _remove_temps(pending)


def _remove_temps(pending: Sequence[tuple[Path, Path]]) -> None:
    """The temp files of ``(temp, target)`` pairs removed (those already renamed are gone already)."""
    for tmp, _ in pending:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
