"""Rules for the paths a run writes: the file-name prefix, and whether two paths are one file."""

from __future__ import annotations

import os
from pathlib import Path

from dataflow_mm.common.errors import StorageError


def check_file_name_prefix(prefix: str) -> str:
    """``prefix`` when it is a plain file-name part, else ``StorageError``.

    Step files are ``{cache_path}/{prefix}_step{k}.{type}``: a prefix holding a path separator,
    ``..`` or an absolute path would put them (and manifests, summary, report) outside the cache.
    """
    text = str(prefix)
    separators = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}  # "\\" too: a separator on Windows
    if not text or any(s in text for s in separators) or ".." in text or "\x00" in text or text == ".":
        raise StorageError(
            f"file_name_prefix {prefix!r} is not a file-name part: use letters, digits, '-', '_' or '.', "
            "without '/', '\\' or '..' (step files must stay inside cache_path)"
        )
    return text


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (same real path, or the same inode when both exist)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why a file could not be written at ``path`` (without creating anything), or None if it can."""
    target = Path(path)
    if target.is_dir():
        return "it is a folder"
    if target.exists() and not os.access(target, os.W_OK):
        return "it is not writable"
    parent = target.parent
    while not parent.exists():  # the nearest existing folder must let us create the missing ones
        parent = parent.parent
    if not parent.is_dir():
        return f"'{parent}' is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"folder '{parent}' is not writable"
    return None


StepFiles = tuple[int, "os.PathLike[str] | str", "os.PathLike[str] | str", list[Path]]


def write_conflicts(steps: list[StepFiles]) -> list[str]:
    """Problems with what a run's steps write, given each step's (number, input, output, extra outputs).

    A step may not write a file that it or an earlier step reads (the user's input above all: a
    step file of the same cache and prefix given as input, or an extra output pointed at the
    input), and no two writes may land on one file.
    """
    problems: list[str] = []
    reads: list[tuple[int, Path]] = []
    written: list[tuple[int, Path]] = []
    for index, source, output, extras in steps:
        reads.append((index, Path(source)))
        for target in [Path(output), *map(Path, extras)]:
            for reader, read in reads:
                if same_file(target, read):
                    whose = "its own input" if reader == index else f"the input of step {reader}"
                    problems.append(
                        f"step {index} would write '{target}', which is {whose}: a run never writes a file it reads"
                    )
            for writer, other in written:
                if same_file(target, other):
                    problems.append(f"step {index} would write '{target}', which step {writer} also writes")
            written.append((index, target))
    return problems


def check_writes(steps: list[StepFiles]) -> None:
    """``StorageError`` (before any work) when ``write_conflicts`` finds a problem."""
    problems = write_conflicts(steps)
    if problems:
        raise StorageError("; ".join(problems))
