"""The operator contract: an operator declares its keys and transforms a DataFrame; the engine does the rest.

Subclasses implement ``process(frame, **keys) -> frame`` (pure: a DataFrame in, the same rows out
with new columns) and declare their keys once in ``key_spec`` (``core.keys``), from which the base
class builds ``run(storage, ...)``. ``run`` hands an :class:`OperatorCall`
to ``core.dispatch``: a compiling pipeline records it, the engine runs it (chunks, resume,
rejects, manifest, streaming: ``engine.step_executor``). What stays here is the contract itself:

* what an operator reads, writes and depends on (keys, columns, media, optional modules);
* what makes its output current: ``params()``, ``provenance()`` and the ``fingerprint`` of both;
* ``process_chunk``: rows that already carry an ``error`` pass through untouched, rows that fail get
  one, failed rows keep their input values, every declared output column exists.
"""

from __future__ import annotations

from abc import ABC, ABCMeta, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from dataflow_mm.common.deps import check_available
from dataflow_mm.common.errors import ERROR_COLUMN, MissingFieldError, is_row_error, row_error_text
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.dispatch import dispatch
from dataflow_mm.core.keys import KeySpec, spec_run
from dataflow_mm.core.params import ParamSpec, bound_arguments, derive_params, derive_provenance
from dataflow_mm.core.results import StepResult
from dataflow_mm.storage.file_storage import FileStorage, record_produced
from dataflow_mm.storage.manifest import fingerprint
from dataflow_mm.storage.media import externalize_media

log = get_logger("operators")

TRUNCATED_COLUMN = "truncated"  # True on rows whose model answer stopped at max_tokens


@dataclass
class OperatorCall:
    """One ``run`` call: which operator, on which step of which storage, with which keys."""

    operator: OperatorABC
    storage: FileStorage
    keys: dict[str, Any]


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

    Declare the keys once in ``key_spec`` (see ``core.keys``): the base class builds ``run``,
    ``input_columns``, ``output_columns`` and ``explicit_input_columns`` from it (an operator whose
    ``run`` takes arguments a KeySpec cannot say writes ``run`` itself, calling
    ``self.execute(storage, **keys)``, and overrides the column methods it needs). ``holds_model``: whether it loads
    a model (Ray gives such an operator long-lived actors; None: detected from its attributes).
    ``params()`` (the resume fingerprint's parameters) and ``provenance()`` are derived from the
    constructor's arguments (``core.params``); ``param_spec`` says where they differ.
    ``requires``: optional modules it needs, as ``(module, pip extra)``, checked at construction; those
    and the ones its servings and scorers declare (e.g. vLLM's) are checked by ``compile``, before any
    step writes anything (a serving can be built, e.g. to plan GPUs, where its backend is missing).
    """

    key_spec: ClassVar[KeySpec | None] = None
    # The name the resume fingerprint records for this class (its own ``__dict__`` only, never inherited):
    # a shipped operator keeps the name it had when its caches were written; None: ``module.qualname``.
    operator_id: ClassVar[str | None] = None
    param_spec: ClassVar[ParamSpec] = ParamSpec()
    holds_model: ClassVar[bool | None] = None
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()

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

        Derived from the constructor's arguments and ``param_spec`` (see ``core.params``)."""
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

    def bind_storage(self, storage: FileStorage) -> None:
        """Before the first chunk: image bytes in the input are stored under the storage's media cache."""
        self._media_cache = storage.media_cache
        self._download_timeout = getattr(storage, "download_timeout", None)

    @classmethod
    def stable_id(cls) -> str:
        """The class's name in resume fingerprints: its own ``operator_id``, else ``module.qualname``."""
        return cls.__dict__.get("operator_id") or f"{cls.__module__}.{cls.__qualname__}"

    def fingerprint(self, keys: dict[str, Any]) -> str:
        return fingerprint(
            {
                "operator": self.stable_id(),
                "params": self.params(),
                "keys": keys,
                "provenance": self.provenance(),
            }
        )

    def execute(self, storage: FileStorage, **keys: Any) -> StepResult | None:
        """Run this operator on ``storage``'s current step: the call goes to ``core.dispatch``
        (recorded while a pipeline compiles, else run by the engine)."""
        for path in self.extra_output_paths():
            record_produced(path, storage.output_path)
        return dispatch(OperatorCall(self, storage, keys))

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
