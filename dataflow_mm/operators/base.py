"""The operator contract: an operator declares its keys and transforms a DataFrame; runners do the rest.

Subclasses implement ``process(frame, **keys) -> frame`` (pure: a DataFrame in, the same rows out
with new columns) and declare their keys once in ``key_spec`` (``operators.keys``), from which the
base class builds ``run(storage, ...)`` (or, the older way, write a ``run`` that calls
``self.execute(storage, **keys)``). The step itself (chunks, resume, rejects, manifest, extra outputs,
streaming into the next step) is run by ``runners.step_executor`` through the storage's step
transaction (``storage.step``). What stays here, once, is the per-chunk contract:

* rows that already carry an ``error`` pass through untouched; rows that fail get one;
* compile: while a pipeline is being compiled, ``execute`` records the call instead of running it;
* metrics: ``chunk_metrics`` (optional) gives numbers per chunk, summed into the step's stats;
* provenance: rows answered by a step whose ``provenance()`` is not empty (a model step) get
  ``{"step<k>": "<fingerprint>"}`` merged into their ``provenance`` column; the step's manifest
  (``<step file>.manifest.json``, same fingerprint) records the model, backend, sampling and params.
"""

from __future__ import annotations

from abc import ABC, ABCMeta, abstractmethod
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from dataflow_mm.deps import check_available
from dataflow_mm.errors import (
    ERROR_COLUMN,
    MissingFieldError,
    error_class_of,
    is_row_error,
    row_error_text,
)
from dataflow_mm.logger import get_logger
from dataflow_mm.operators.keys import KeySpec, spec_run
from dataflow_mm.operators.params import ParamSpec, bound_arguments, derive_params, derive_provenance
from dataflow_mm.operators.results import (  # noqa: F401 - their home before results.py
    HISTOGRAM_BINS,
    HISTOGRAM_MARK,
    RATE_SUFFIX,
    StepResult,
    describe_metrics,
    histogram_metrics,
    histograms,
    metric_rates,
)
from dataflow_mm.storage.file_storage import FileStorage, record_produced
from dataflow_mm.storage.formats import Reject
from dataflow_mm.storage.manifest import StepManifest, fingerprint
from dataflow_mm.storage.media import externalize_media
from dataflow_mm.storage.media_stamps import media_stamps

log = get_logger("operators")

PROVENANCE_COLUMN = "provenance"
# Input rows whose ``error`` field held a value that is not an error ("", false, 0, [], {}): processed as usual.
NON_ERROR_VALUES_METRIC = "input_error_values_ignored"
TRUNCATED_COLUMN = "truncated"  # True on rows whose model answer stopped at max_tokens


def count_non_error_values(frame: pd.DataFrame) -> int:
    """Rows of an input chunk whose ``error`` field is set but is not an error (not a non-empty string)."""
    if ERROR_COLUMN not in frame.columns:
        return 0
    return sum(1 for v in frame[ERROR_COLUMN] if not _is_missing(v) and not is_row_error(v))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


@dataclass
class OperatorCall:
    """One ``run`` call seen while compiling: which operator, on which step, with which keys."""

    operator: OperatorABC
    storage: FileStorage
    keys: dict[str, Any]


_recording: ContextVar[list[OperatorCall] | None] = ContextVar("dataflow_mm_recording", default=None)
_results: ContextVar[list[StepResult] | None] = ContextVar("dataflow_mm_results", default=None)


@contextmanager
def _collecting(into: ContextVar[list[Any] | None]) -> Iterator[list[Any]]:
    """Within this block, ``into`` holds a fresh list (returned), where the operators append."""
    items: list[Any] = []
    token = into.set(items)
    try:
        yield items
    finally:
        into.reset(token)


def recording_calls() -> AbstractContextManager[list[OperatorCall]]:
    """Within this block, operators record their ``run`` calls instead of executing them."""
    return _collecting(_recording)


def collecting_results() -> AbstractContextManager[list[StepResult]]:
    """Within this block, every executed (or skipped) step appends its StepResult to the list."""
    return _collecting(_results)


class _OperatorMeta(ABCMeta):
    """Once an operator is constructed (whatever its ``__init__``): keeps its constructor arguments (its
    parameters are derived from them) and checks its own optional dependencies."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        operator = super().__call__(*args, **kwargs)
        operator._init_arguments = bound_arguments(cls, args, kwargs)
        operator.check_dependencies(own_only=True)
        return operator


class OperatorABC(ABC, metaclass=_OperatorMeta):
    """Base class of every operator.

    Declare the keys once in ``key_spec`` (see ``operators.keys``): the base class builds ``run``,
    ``input_columns``, ``output_columns`` and ``explicit_input_columns`` from it. An operator that
    writes its own ``run(storage, ...)`` calling ``self.execute(storage, **keys)`` (the older way)
    keeps working; it then overrides the column methods it needs. ``holds_model``: whether it loads
    a model (Ray gives such an operator long-lived actors; None: detected from its attributes).
    ``params()`` (the resume fingerprint's parameters) and ``provenance()`` are derived from the
    constructor's arguments (``operators.params``); ``param_spec`` says where they differ.
    ``requires``: optional modules it needs, as ``(module, pip extra)``, checked at construction; those
    and the ones its servings and scorers declare (e.g. vLLM's) are checked by ``compile``, before any
    step writes anything (a serving can be built, e.g. to plan GPUs, where its backend is missing).
    """

    key_spec: ClassVar[KeySpec | None] = None
    param_spec: ClassVar[ParamSpec] = ParamSpec()
    holds_model: ClassVar[bool | None] = None
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()

    # The row reference of the running step ({"step<k>": fingerprint}), set by ``bind_step``.
    _provenance_ref: dict[str, str] | None = None
    # Where image bytes and downloads of the running step go, set by ``bind_storage``.
    _media_cache: Path | None = None
    _download_timeout: float | None = None  # each attempt at an image URL (None: the downloads' default)
    # The constructor's arguments by name (defaults applied), set once the operator is built.
    _init_arguments: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance, never mutated

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("key_spec") is not None and "run" not in cls.__dict__:
            cls.run = spec_run(cls.__dict__["key_spec"])  # type: ignore[method-assign]
        if "param_spec" in cls.__dict__:
            cls.param_spec.check(cls)

    def run(self, storage: FileStorage, *args: Any, **keys: Any) -> Any:
        """Run on ``storage``'s next step (built from ``key_spec``; an operator without one defines its own)."""
        raise TypeError(
            f"{self.name} has no run(): declare its keys once, e.g. key_spec = KeySpec(defaults={{'input_key': "
            "'text', 'output_key': 'out'}, reads=('input_key',), writes=('output_key',)), or define "
            "run(self, storage, input_key='text', ...) that calls self.execute(storage, input_key=input_key, ...)"
        )

    def key_values(self, keys: dict[str, Any]) -> dict[str, Any]:
        """``keys`` completed with ``key_spec``'s defaults: ``process(frame, **keys)`` reads its columns from it."""
        return self.key_spec.fill(keys) if self.key_spec else dict(keys)

    def dependencies(self, own_only: bool = False) -> list[tuple[str, str]]:
        """The optional modules this operator needs: its own ``requires`` and its attributes' (servings, scorers)."""
        found = list(self.requires)
        for value in [] if own_only else vars(self).values():
            found += [tuple(item) for item in getattr(type(value), "requires", ()) if isinstance(item, tuple)]
        return list(dict.fromkeys(found))

    def check_dependencies(self, own_only: bool = False) -> None:
        """Raise MissingDependencyError (a user error: one line, exit 2) for a needed module not installed."""
        for module, extra in self.dependencies(own_only):
            check_available(module, extra)

    def input_columns(self, **keys: Any) -> list[str]:
        """Columns that must exist in the step this operator reads (checked by ``compile``)."""
        return self.key_spec.columns(self.key_spec.reads, keys) if self.key_spec else []

    def explicit_input_columns(self, **keys: Any) -> list[str]:
        """Optional input columns the caller named (a key other than its default): ``compile`` fails when
        one exists in no row, instead of the operator silently doing without it."""
        return self.key_spec.explicit(keys) if self.key_spec else []

    def output_columns(self, **keys: Any) -> list[str]:
        """Columns this operator adds (so ``compile`` knows what later steps can use)."""
        return self.key_spec.columns(self.key_spec.writes, keys) if self.key_spec else []

    def params(self) -> dict[str, Any]:
        """Parameters that change the output: part of the resume fingerprint and the manifest.

        Derived from the constructor's arguments and ``param_spec`` (see ``operators.params``)."""
        return derive_params(self, self._init_arguments, self.param_spec, OperatorABC)

    def provenance(self) -> dict[str, Any]:
        """What produced the output beyond ``params`` (model, backend, sampling): by default the
        ``describe()`` of each serving or scorer the constructor was given, by argument name."""
        return derive_provenance(self, self._init_arguments, OperatorABC)

    def media_columns(self, **keys: Any) -> list[str]:
        """Columns naming the media files this operator reads; their content is part of what makes a step
        current (``storage.media_stamps``). By default the columns named by ``input_image*`` keys."""
        return [v for k, v in keys.items() if k.startswith("input_image") and isinstance(v, str)]

    def extra_output_paths(self) -> list[Path]:
        """Other files that receive a copy of this step's rows (e.g. a config's output path)."""
        return []

    def prepare(self, storage: FileStorage) -> None:
        """Called once before the first chunk (e.g. to create output folders)."""

    def chunks_in_flight(self) -> int:
        """How many chunks of one step the executor may transform at once (``process`` must then be
        safe to call from several threads). 1 by default; an operator whose serving waits on I/O
        returns its serving's ``concurrent_chunks``."""
        return 1

    def chunk_metrics(self, frame: pd.DataFrame, **keys: Any) -> dict[str, float]:
        """Numbers about one output chunk, summed over the step (``X`` and ``X_total`` give a rate)."""
        return {}

    @abstractmethod
    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        """Transform rows without errors; return the same rows (same index) with new columns."""

    # -- execution ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    def bind_step(self, step: int, fingerprint: str) -> None:
        """Before the first chunk of step ``step``: rows of a model step will reference its manifest."""
        self._provenance_ref = {f"step{step}": fingerprint} if self.provenance() else None

    def bind_storage(self, storage: FileStorage) -> None:
        """Before the first chunk: image bytes in the input are stored under the storage's media cache."""
        self._media_cache = storage.media_cache
        self._download_timeout = getattr(storage, "download_timeout", None)

    def chunk_counts(
        self, frame: pd.DataFrame, rejects: list[Reject], out: pd.DataFrame, keys: dict[str, Any]
    ) -> dict[str, Any]:
        """What a chunk's done-marker records: rows in/out, row errors by class and the chunk's metrics."""
        counts: dict[str, Any] = {
            "rows_in": len(frame) + len(rejects),
            "rows_out": len(out),
            "row_errors": dict(Counter(c for c in map(error_class_of, out[ERROR_COLUMN]) if c)),
        }
        metrics = self.chunk_metrics(out, **keys)
        ignored = count_non_error_values(frame)
        if ignored:
            metrics = {**metrics, NON_ERROR_VALUES_METRIC: ignored}
        if metrics:
            counts["metrics"] = metrics
        return counts

    def fingerprint(self, keys: dict[str, Any]) -> str:
        return fingerprint(
            {
                "operator": f"{type(self).__module__}.{type(self).__qualname__}",
                "params": self.params(),
                "keys": keys,
                "provenance": self.provenance(),
            }
        )

    def execute(self, storage: FileStorage, **keys: Any) -> StepResult | None:
        """Run this operator on ``storage``'s current step (or record the call while compiling).

        The step itself is run by the step executor (``runners.step_executor``), the one loop every
        runner shares.
        """
        for path in self.extra_output_paths():
            record_produced(path, storage.output_path)
        calls = _recording.get()
        if calls is not None:
            calls.append(OperatorCall(self, storage, keys))
            return None
        from dataflow_mm.runners.step_executor import execute_step  # runners execute operators

        result = execute_step(OperatorCall(self, storage, keys))
        results = _results.get()
        if results is not None:
            results.append(result)
        return result

    def run_chunk(
        self, frame: pd.DataFrame, rejects: list[Reject], keys: dict[str, Any], media_root: Path | None
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """One chunk: the media it names stamped first, then processed; returns the rows and the marker's counts."""
        media = media_stamps((frame[c] for c in self.media_columns(**keys) if c in frame.columns), media_root)
        out = self.process_chunk(frame, **keys)
        counts = self.chunk_counts(frame, rejects, out, keys)
        if media:
            counts["media"] = media
        return out, counts

    def process_chunk(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        """``process`` on the rows without an error; rows with one pass through, order kept."""
        # a copy in which integers stay integers beside missing values, with image bytes stored as files
        frame = externalize_media(frame, self._media_cache).astype(object)
        if ERROR_COLUMN not in frame.columns:
            frame[ERROR_COLUMN] = None
        ok = ~frame[ERROR_COLUMN].map(is_row_error)
        frame.loc[ok, ERROR_COLUMN] = None  # "", False, 0, [] are not errors (counted by chunk_counts)
        absent = [k for k in self.input_columns(**keys) if k not in frame.columns]
        if absent and ok.any():  # e.g. a chunk in which no row has the image key
            error = MissingFieldError(f"the row has no {', '.join(map(repr, absent))} field")
            frame.loc[ok, ERROR_COLUMN] = row_error_text(error)
            ok[:] = False
        if not ok.any():
            return self._with_output_columns(frame, keys)
        processed = self.process(frame[ok], **keys)
        if len(processed) != int(ok.sum()):
            raise RuntimeError(f"{self.name}.process returned {len(processed)} rows for {int(ok.sum())}")
        processed = _keep_input_of_failed_rows(frame[ok], processed)
        if self._provenance_ref:
            processed = _with_provenance(processed, self._provenance_ref)
        if not ok.all():
            processed = pd.concat([processed.astype(object), frame[~ok]]).sort_index()
        return self._with_output_columns(processed, keys)

    def _with_output_columns(self, frame: pd.DataFrame, keys: dict[str, Any]) -> pd.DataFrame:
        """``frame`` with every declared output column present (null where no row filled it)."""
        missing = [c for c in self.output_columns(**keys) if c not in frame.columns]
        if not missing:
            return frame
        frame = frame.copy()
        for column in missing:
            frame[column] = None
        return frame


def _keep_input_of_failed_rows(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """``after`` where no row that failed in this step lost an input value to null.

    A failed row is kept for the user to inspect and fix: an operator that blanked one of its input
    columns for it (e.g. ``bbox`` written as null) must not hide what the row held. Values an operator
    updated on purpose (e.g. Img-Diff's ``bbox_decisions`` with per-box errors) stay as written.
    """
    failed = (after[ERROR_COLUMN].notna() & before[ERROR_COLUMN].reindex(after.index).isna()).tolist()
    if not any(failed):
        return after
    after = after.copy()
    for column in before.columns:
        if column == ERROR_COLUMN or column not in after.columns:
            continue
        original = before[column].reindex(after.index).tolist()
        values = after[column].tolist()
        blanked = [
            f and _is_null(new) and not _is_null(old) for old, new, f in zip(original, values, failed, strict=True)
        ]
        if not any(blanked):
            continue
        after[column] = pd.Series(
            [old if restore else new for old, new, restore in zip(original, values, blanked, strict=True)],
            index=after.index,
            dtype=object,
        )
    return after


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _with_provenance(frame: pd.DataFrame, ref: dict[str, str]) -> pd.DataFrame:
    """``frame`` with ``ref`` merged into each row's provenance reference (earlier steps' entries kept)."""
    previous = frame[PROVENANCE_COLUMN] if PROVENANCE_COLUMN in frame.columns else [None] * len(frame)
    frame = frame.copy()
    frame[PROVENANCE_COLUMN] = [
        {**({k: v for k, v in p.items() if v} if isinstance(p, dict) else {}), **ref} for p in previous
    ]
    return frame


def step_manifests(row_provenance: dict[str, str] | None, storage: FileStorage) -> dict[str, StepManifest]:
    """The manifests a row's ``provenance`` reference points to, each checked by its fingerprint.

    ``storage`` is the pipeline's storage (its cache folder, prefix and type name the step files).
    Raises ``StorageError`` when a manifest is missing or was rewritten by a different run.
    """
    from dataflow_mm.errors import StorageError

    found: dict[str, StepManifest] = {}
    for step, expected in (row_provenance or {}).items():
        path = storage.step_file(int(step.removeprefix("step")))
        manifest = StepManifest.load(path)
        if manifest is None or manifest.fingerprint != expected:
            got = "missing" if manifest is None else f"fingerprint {manifest.fingerprint}"
            raise StorageError(f"the manifest of {path} does not match the row's {step}={expected} ({got})")
        found[step] = manifest
    return found
