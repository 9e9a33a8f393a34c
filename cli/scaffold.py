"""`dataflowmm init`: copy the pipeline scripts and demo data into a working folder.

The templates ship inside the wheel under ``dataflow_mm/_templates`` (see pyproject's
force-include); in a source checkout they are the repository's ``gpu_pipelines/`` and ``data/``.
Existing files are never overwritten unless ``force`` is set, and nothing ever prompts. A symbolic
link inside the target (a file or a folder on the way to one) is never followed: it is skipped, and
with ``force`` the link itself is replaced, so nothing outside the target is ever written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dataflow_mm.storage.atomic import AtomicFile
from dataflow_mm.templates import TEMPLATE_DIRS, template_root

_SKIP_NAMES = {"__pycache__", ".DS_Store"}


def template_files(root: Path | None = None) -> list[Path]:
    """Template files relative to the template root, sorted."""
    root = root or template_root()
    files = []
    for name in TEMPLATE_DIRS:
        for path in (root / name).rglob("*"):
            if path.is_file() and not _SKIP_NAMES.intersection(path.relative_to(root).parts) and path.suffix != ".pyc":
                files.append(path.relative_to(root))
    return sorted(files)


@dataclass
class InitResult:
    """What ``init`` did (or, with dry_run, would do)."""

    created: list[Path] = field(default_factory=list)
    overwritten: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    skipped_links: list[Path] = field(default_factory=list)  # a link on the way: never followed


def link_on_the_way(target: Path, relative: Path) -> Path | None:
    """The first of ``target/relative``'s paths below ``target`` that is a symbolic link (dangling or not)."""
    current = target
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def init_workspace(target: Path, force: bool = False, dry_run: bool = False) -> InitResult:
    """Copy every template file into ``target``; skip existing files unless ``force``."""
    root = template_root()
    result = InitResult()
    for relative in template_files(root):
        destination = target / relative
        link = link_on_the_way(target, relative)
        if link is not None and not force:
            result.skipped_links.append(relative)
            continue
        if link is None and destination.exists() and not force:
            result.skipped.append(relative)
            continue
        (result.overwritten if link is not None or destination.exists() else result.created).append(relative)
        if not dry_run:
            if link is not None:
                link.unlink()  # the link itself, never what it points to
            destination.parent.mkdir(parents=True, exist_ok=True)
            with AtomicFile(destination) as atomic:  # a rename: replaces whatever is there, follows nothing
                shutil.copyfile(root / relative, atomic.tmp)
    return result
