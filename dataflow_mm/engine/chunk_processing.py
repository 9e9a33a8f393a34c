"""One chunk through one operator, as the engine runs it: media stamped, processed, provenance, counts.

``OperatorABC.process_chunk`` (core) is the per-row contract; around it, the engine stamps the media a
chunk names (part of what makes a step current), merges the step's reference into each answered row's
``provenance`` (a model step's rows name the manifest that says which model and sampling made them)
and counts what the chunk's done-marker records.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from dataflow_mm.common.errors import ERROR_COLUMN, StorageError, error_class_of, is_row_error
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.storage.chunks import Reject
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.manifest import StepManifest
from dataflow_mm.storage.media_stamps import media_stamps

PROVENANCE_COLUMN = "provenance"
# Input rows whose ``error`` field held a value that is not an error ("", false, 0, [], {}): processed as usual.
NON_ERROR_VALUES_METRIC = "input_error_values_ignored"


def provenance_ref(operator: OperatorABC, step: int, fingerprint: str) -> dict[str, str] | None:
    """The reference the rows of a model step get (``{"step<k>": fingerprint}``); None for other steps."""
    return {f"step{step}": fingerprint} if operator.provenance() else None


def run_chunk(
    operator: OperatorABC,
    frame: pd.DataFrame,
    rejects: list[Reject],
    keys: dict[str, Any],
    media_root: Path | None,
    provenance: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One chunk: the media it names stamped first, then processed; returns the rows and the marker's counts."""
    media = media_stamps((frame[c] for c in operator.media_columns(**keys) if c in frame.columns), media_root)
    out = operator.process_chunk(frame, **keys)
    if provenance:
        out = with_provenance(out, provenance, answered=_without_input_error(frame, out))
    counts = chunk_counts(operator, frame, rejects, out, keys)
    if media:
        counts["media"] = media
    return out, counts


def _without_input_error(frame: pd.DataFrame, out: pd.DataFrame) -> list[bool]:
    """Per output row: whether it reached ``process`` (it had no error when the chunk came in)."""
    if ERROR_COLUMN not in frame.columns:
        return [True] * len(out)
    came_in = frame[ERROR_COLUMN].reindex(out.index)
    return [not is_row_error(v) for v in came_in]


def chunk_counts(
    operator: OperatorABC, frame: pd.DataFrame, rejects: list[Reject], out: pd.DataFrame, keys: dict[str, Any]
) -> dict[str, Any]:
    """What a chunk's done-marker records: rows in/out, row errors by class and the chunk's metrics."""
    counts: dict[str, Any] = {
        "rows_in": len(frame) + len(rejects),
        "rows_out": len(out),
        "row_errors": dict(Counter(c for c in map(error_class_of, out[ERROR_COLUMN]) if c)),
    }
    metrics = operator.chunk_metrics(out, **keys)
    ignored = count_non_error_values(frame)
    if ignored:
        metrics = {**metrics, NON_ERROR_VALUES_METRIC: ignored}
    if metrics:
        counts["metrics"] = metrics
    return counts


def count_non_error_values(frame: pd.DataFrame) -> int:
    """Rows of an input chunk whose ``error`` field is set but is not an error (not a non-empty string)."""
    if ERROR_COLUMN not in frame.columns:
        return 0
    return sum(1 for v in frame[ERROR_COLUMN] if not _is_missing(v) and not is_row_error(v))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def with_provenance(frame: pd.DataFrame, ref: dict[str, str], answered: list[bool]) -> pd.DataFrame:
    """``frame`` with ``ref`` merged into the provenance of each ``answered`` row (earlier steps' entries kept)."""
    if not any(answered):
        return frame
    previous = frame[PROVENANCE_COLUMN] if PROVENANCE_COLUMN in frame.columns else [None] * len(frame)
    frame = frame.copy()
    frame[PROVENANCE_COLUMN] = [
        ({**({k: v for k, v in p.items() if v} if isinstance(p, dict) else {}), **ref} if a else p)
        for p, a in zip(previous, answered, strict=True)
    ]
    return frame


def step_manifests(row_provenance: dict[str, str] | None, storage: FileStorage) -> dict[str, StepManifest]:
    """The manifests a row's ``provenance`` reference points to, each checked by its fingerprint.

    ``storage`` is the pipeline's storage (its cache folder, prefix and type name the step files).
    Raises ``StorageError`` when a manifest is missing or was rewritten by a different run.
    """
    found: dict[str, StepManifest] = {}
    for step, expected in (row_provenance or {}).items():
        path = storage.step_file(int(step.removeprefix("step")))
        manifest = StepManifest.load(path)
        if manifest is None or manifest.fingerprint != expected:
            got = "missing" if manifest is None else f"fingerprint {manifest.fingerprint}"
            raise StorageError(f"the manifest of {path} does not match the row's {step}={expected} ({got})")
        found[step] = manifest
    return found
