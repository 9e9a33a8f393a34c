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
import os
import re
import secrets
from pathlib import Path
from typing import Any, Self

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
    pattern = _temp_pattern(target)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
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
