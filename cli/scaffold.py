"""`dataflowmm init`: copy the pipeline scripts and demo data into a working folder.

The templates ship inside the wheel under ``dataflow_mm/_templates`` (see pyproject's
force-include); in a source checkout they are the repository's ``gpu_pipelines/`` and ``data/``.
Existing files are never overwritten unless ``force`` is set, and nothing ever prompts.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dataflow_mm.pipeline.templates import TEMPLATE_DIRS, template_root

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


def init_workspace(target: Path, force: bool = False, dry_run: bool = False) -> InitResult:
    """Copy every template file into ``target``; skip existing files unless ``force``."""
    root = template_root()
    result = InitResult()
    for relative in template_files(root):
        destination = target / relative
        if destination.exists() and not force:
            result.skipped.append(relative)
            continue
        (result.overwritten if destination.exists() else result.created).append(relative)
        if not dry_run:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / relative, destination)
    return result
