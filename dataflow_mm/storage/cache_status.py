"""Where a cache folder's run stands, step by step, and what rerunning the same command would do.

Read from the files alone (manifests, chunk parts, row indexes, the input each step read), so it
answers without the pipeline's code or a model: ``dataflowmm status <cache>`` and the HTML report
show it. A step is *complete* when its manifest holds no pending row and still matches its input and
its file; a step whose input has changed since (or whose earlier step is not complete) runs again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dataflow_mm.common.errors import ROW_DONE, ROW_FAILED, ROW_PENDING
from dataflow_mm.common.row_outcomes import row_counts, stats_counts
from dataflow_mm.storage.hashing import file_sha256
from dataflow_mm.storage.manifest import MANIFEST_SUFFIX, StepManifest

_STEP = re.compile(r"^(?P<prefix>.+)_step(?P<step>\d+)\.(?P<type>jsonl|json|csv|parquet)$")
_PARTS = re.compile(r"^\.(?P<name>.+)\.parts$")


@dataclass
class StepStatus:
    """One step of a cache: its rows by outcome, whether it is complete, and what a rerun does."""

    step: int
    operator: str
    path: str
    done: int = 0
    failed: int = 0
    pending: int = 0
    complete: bool = False
    state: str = ""  # complete | incomplete | input changed | interrupted | file changed
    rerun: str = ""  # what rerunning the same command would do for this step
    chunks_in_progress: int = 0
    row_index: bool = False  # a rerun can reuse the rows this step computed (``storage.row_index``)

    def line(self) -> str:
        counts = f"{self.done} done, {self.failed} failed, {self.pending} pending"
        return f"step {self.step} {self.operator}: {self.state} ({counts})\n    rerun: {self.rerun}"


@dataclass
class CacheStatus:
    """Every step of one run (one file name prefix) of a cache folder."""

    cache_path: str
    prefix: str
    steps: list[StepStatus] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.steps) and all(step.complete for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache_path": self.cache_path,
            "prefix": self.prefix,
            "complete": self.complete,
            "steps": [asdict(s) for s in self.steps],
        }

    def text(self) -> str:
        head = f"{self.prefix} in {self.cache_path}: " + (
            "complete (a rerun skips every step)" if self.complete else "INCOMPLETE: rerun the same command to continue"
        )
        return "\n".join([head, *(step.line() for step in self.steps)])


def _steps_of(folder: Path) -> dict[str, dict[int, Path]]:
    """Per prefix, the step files (existing, or being written: a parts folder) of ``folder``."""
    found: dict[str, dict[int, Path]] = {}
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(MANIFEST_SUFFIX):
            name = name[: -len(MANIFEST_SUFFIX)]
        elif (parts := _PARTS.match(name)) is not None:
            name = parts["name"]
        match = _STEP.match(name)
        if match is not None:
            found.setdefault(match["prefix"], {})[int(match["step"])] = folder / name
    return found


def _parts_counts(step_file: Path) -> tuple[int, dict[str, int]]:
    """Chunks finished in the step's parts folder (a run in progress or killed) and their rows by outcome."""
    folder = step_file.with_name(f".{step_file.name}.parts")
    chunks, rows_out, errors = 0, 0, {}
    for marker in sorted(folder.glob("chunk_*.done.json")) if folder.is_dir() else []:
        try:
            counts = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        chunks += 1
        rows_out += int(counts.get("rows_out", 0))
        for cls, n in (counts.get("row_errors") or {}).items():
            errors[cls] = errors.get(cls, 0) + int(n)
    return chunks, row_counts(rows_out, errors)


def _input_changed(manifest: StepManifest) -> bool:
    try:
        return file_sha256(manifest.input_path) != manifest.input_sha256
    except OSError:
        return True


def step_status(number: int, step_file: Path, upstream_complete: bool) -> StepStatus:
    """The status of one step file (see :class:`StepStatus`)."""
    manifest = StepManifest.load(step_file)
    status = StepStatus(number, manifest.operator if manifest else "?", str(step_file))
    chunks, in_progress = _parts_counts(step_file)
    status.chunks_in_progress = chunks
    if manifest is None:
        status.done, status.failed, status.pending = (in_progress[k] for k in (ROW_DONE, ROW_FAILED, ROW_PENDING))
        status.state = "interrupted" if chunks else "not run"
        status.rerun = f"resumes after the {chunks} chunk(s) finished" if chunks else "runs the step"
        return status
    counts = stats_counts(manifest.stats)
    status.done, status.failed, status.pending = (counts[k] for k in (ROW_DONE, ROW_FAILED, ROW_PENDING))
    status.row_index = bool(manifest.rows_sha256)
    reuse = "only the rows it has not computed" if status.row_index else "every row (an older cache: no row index)"
    if not step_file.is_file() or file_sha256(step_file) != manifest.output_sha256:
        status.state, status.rerun = "file changed", "redoes the step: its file is not the one written"
    elif _input_changed(manifest) or not upstream_complete:
        status.state = "input changed" if upstream_complete else "waits on an earlier step"
        status.rerun = f"computes {reuse}"
    elif status.pending:
        status.state = "incomplete"
        status.rerun = f"sends the {status.pending} pending row(s) again, keeps the {status.done} done"
    else:
        status.state, status.complete = "complete", True
        status.rerun = "skips it" + (
            f" (--retry_failed redoes its {status.failed} failed row(s))" if status.failed else ""
        )
    if chunks and not status.complete:
        status.rerun += f"; {chunks} chunk(s) of an interrupted rerun are kept"
    return status


def cache_status(cache_path: str | os.PathLike, prefix: str | None = None) -> CacheStatus:
    """The status of every step of ``prefix``'s run in ``cache_path`` (default: the newest run's prefix).

    Raises ``FileNotFoundError`` / ``LookupError`` when there is no such folder or run.
    """
    folder = Path(cache_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"No such cache folder: '{folder}'")
    found = _steps_of(folder)
    if prefix is None and found:
        prefix = max(sorted(found), key=lambda p: max(_mtime(f) for f in found[p].values()))
    if prefix is None or prefix not in found:
        known = ", ".join(sorted(found)) or "none"
        raise LookupError(f"No steps of run '{prefix}' in '{folder}' (runs found: {known})")
    status = CacheStatus(str(folder), prefix)
    upstream = True
    for number, step_file in sorted(found[prefix].items()):
        step = step_status(number, step_file, upstream)
        upstream = upstream and step.complete
        status.steps.append(step)
    return status


def _mtime(path: Path) -> float:
    for candidate in (Path(f"{path}{MANIFEST_SUFFIX}"), path, path.with_name(f".{path.name}.parts")):
        try:
            return candidate.stat().st_mtime
        except OSError:
            continue
    return 0.0
