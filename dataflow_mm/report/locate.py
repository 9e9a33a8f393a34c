"""Which step file a report shows: a cache folder's newest run and last step, or one step file."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dataflow_mm.common.errors import UserError
from dataflow_mm.storage.manifest import StepManifest
from dataflow_mm.storage.table_types import SUPPORTED_TYPES

_STEP_RE = re.compile(r"^(?P<prefix>.+)_step(?P<step>\d+)\.(?P<ext>" + "|".join(SUPPORTED_TYPES) + r")$")


class ReportError(UserError):
    """The report cannot be written (no step files, unknown step, unreadable table)."""


# -- locating the step file --------------------------------------------------------------------
@dataclass
class StepLocation:
    """Which table the report shows, and the run it belongs to."""

    table: Path
    cache_dir: Path
    prefix: str | None = None
    step: int | None = None
    steps: dict[int, Path] = field(default_factory=dict)

    @property
    def summary_path(self) -> Path | None:
        return self.cache_dir / f"{self.prefix}_summary.json" if self.prefix else None


def _scan_steps(folder: Path) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    for path in folder.iterdir():
        match = _STEP_RE.match(path.name)
        if not match or not path.is_file():
            continue
        steps = found.setdefault(match["prefix"], {})
        index = int(match["step"])
        if index not in steps or path.stat().st_mtime > steps[index].stat().st_mtime:
            steps[index] = path
    return found


def _newest_prefix(folder: Path, found: dict[str, dict[int, Path]]) -> str:
    def recency(prefix: str) -> float:
        summary = folder / f"{prefix}_summary.json"
        if summary.is_file():
            return summary.stat().st_mtime
        return max(p.stat().st_mtime for p in found[prefix].values())

    return max(sorted(found), key=recency)


def locate_step(cache_path: str | os.PathLike, step: int | None = None, prefix: str | None = None) -> StepLocation:
    """The step file to show: ``cache_path`` is a cache folder (last step of its newest run) or a step file."""
    path = Path(cache_path)
    if path.is_file():
        match = _STEP_RE.match(path.name)
        if step is not None and (match is None or int(match["step"]) != step):
            raise ReportError(f"--step {step} cannot be used with the table file '{path}': pass its cache folder")
        if match is None:
            return StepLocation(path, path.parent)
        steps = _scan_steps(path.parent).get(match["prefix"], {})
        return StepLocation(path, path.parent, match["prefix"], int(match["step"]), steps)
    if not path.is_dir():
        raise ReportError(f"No such cache folder or step file: '{path}'")
    found = _scan_steps(path)
    if prefix is not None and prefix not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ReportError(f"No step files with prefix '{prefix}' in '{path}' (prefixes found: {known})")
    if not found:
        raise ReportError(
            f"No step files ('<prefix>_step<k>.<jsonl|json|csv|parquet>') in '{path}': has a run finished there?"
        )
    prefix = prefix or _newest_prefix(path, found)
    steps = found[prefix]
    index = max(steps) if step is None else step
    if index == 0 and 1 in steps:
        manifest = StepManifest.load(steps[1])
        if manifest and Path(manifest.input_path).is_file():
            return StepLocation(Path(manifest.input_path), path, prefix, 0, steps)
    if index not in steps:
        available = ", ".join(str(k) for k in sorted(steps))
        raise ReportError(f"Step {index} of '{prefix}' not found in '{path}' (steps available: {available})")
    return StepLocation(steps[index], path, prefix, index, steps)
