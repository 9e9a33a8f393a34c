"""The worker side of the Ray runner: what runs inside Ray tasks and model actors.

A ``_ChunkWorker`` runs one operator on whole chunks and sends each chunk's rows and done-marker
counts back to the driver, whose step executor writes them (as for the in-process runner); a
``ModelActor`` holds one for a model operator for the whole run; ``run_chunk_in_task`` is the task
of the other operators. Serving counters travel back as deltas (``add_serving_counters`` adds them
into the driver's servings).
"""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import socket
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd

from dataflow_mm.common.errors import RunStoppedError, UserError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.engine.chunk_processing import provenance_ref, run_chunk
from dataflow_mm.serving.base import EngineDiedError, ServingStats, VLMServing
from dataflow_mm.storage.chunks import Reject
from dataflow_mm.storage.file_storage import FileStorage

log = get_logger("engine.ray")

_STAT_FIELDS = ("calls", "requests", "failed", "retried", "truncated", "prompt_tokens", "completion_tokens")


# ---------------------------------------------------------------- which operators hold a model


def is_model_holder(value: Any) -> bool:
    """A VLM serving, or a scorer-like object that loads a model lazily (``load`` + ``cleanup``)."""
    if isinstance(value, VLMServing):
        return True
    if isinstance(value, type):
        return False
    return callable(getattr(value, "load", None)) and callable(getattr(value, "cleanup", None))


def operator_attributes(operator: OperatorABC) -> Iterator[tuple[str, Any]]:
    """``(path, value)`` of the operator's attributes and of its sub-operators' (one level down)."""
    for name, value in sorted(vars(operator).items()):
        yield name, value
        if isinstance(value, OperatorABC):
            for sub_name, sub_value in sorted(vars(value).items()):
                yield f"{name}.{sub_name}", sub_value


def holds_model(operator: OperatorABC) -> bool:
    """True when ``operator`` should run in an actor pool that keeps its model loaded.

    An operator may say so itself with a ``holds_model`` attribute (bool); otherwise it is
    True when it (or a sub-operator) has a VLM serving or a lazily loading scorer.
    """
    declared = getattr(operator, "holds_model", None)
    if isinstance(declared, bool):
        return declared
    return any(is_model_holder(value) for _, value in operator_attributes(operator))


def servings_of(operator: OperatorABC) -> dict[str, VLMServing]:
    """The operator's VLM servings by attribute path (so worker-side stats map back to the driver's)."""
    return {path: value for path, value in operator_attributes(operator) if isinstance(value, VLMServing)}


# ---------------------------------------------------------------- the worker side


class _ChunkWorker:
    """Runs one operator on whole chunks inside a Ray worker, returning each chunk's rows and counts.

    A model operator's actors are one each (``ModelActor``): the model loads when the actor starts and
    stays for the whole run. Task operators get one per worker process and step (``_map_chunks_in_task``).
    ``bind`` sets the step (parts folder, keys, ``prepare``) once per step and worker.
    """

    def __init__(
        self,
        operator: OperatorABC,
        load_models: bool = False,
        actor_settings: dict[str, Any] | None = None,
        driver_folder: str | None = None,
    ) -> None:
        self.driver_folder = driver_folder
        enter_driver_folder(driver_folder)
        self.operator = operator
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._servings = servings_of(operator)
        self._startup_error: UserError | None = None
        self._is_actor = load_models
        self._step_token: str | None = None
        self.provenance: dict[str, str] | None = None
        settings = actor_settings or {}
        if settings.get("cpu_threads"):
            _set_cpu_threads(int(settings["cpu_threads"]))
        for serving in self._servings.values():
            if settings.get("distributed_executor_backend") and getattr(serving, "tensor_parallel_size", 1) > 1:
                serving.engine_kwargs.setdefault(
                    "distributed_executor_backend", settings["distributed_executor_backend"]
                )
        try:
            if load_models:  # an actor loads its models (starts its engine) before it takes work
                for _, value in operator_attributes(operator):
                    if is_model_holder(value) and callable(getattr(value, "load", None)):
                        value.load()
        except EngineDiedError as exc:
            self._engine_died(exc)
        except UserError as exc:  # reported with the first chunk, as the project's own error
            self._startup_error = exc

    def bind(self, token: str, storage: FileStorage, keys: dict[str, Any], step: int, fingerprint: str) -> None:
        """Work on step ``step`` (identified by ``token``); ``prepare`` runs once per step here."""
        enter_driver_folder(self.driver_folder)  # a task worker process may have run other code since
        if token == self._step_token:
            return
        self._step_token = token
        self.keys = keys
        self.media_root = storage.media_root
        self._step_error: UserError | None = self._startup_error
        if self._step_error is not None:
            return
        try:
            self.provenance = provenance_ref(self.operator, step, fingerprint)
            self.operator.bind_storage(storage)
            self.operator.prepare(storage)
        except EngineDiedError as exc:
            self._engine_died(exc)
        except UserError as exc:
            self._step_error = exc

    def _engine_died(self, exc: EngineDiedError) -> None:
        """An actor whose engine died exits: Ray starts a fresh actor and retries its chunk there."""
        if not self._is_actor:
            raise exc
        log.error(f"{self.worker}: {exc}; this actor exits so that Ray replaces it")
        os._exit(3)

    def release(self) -> None:
        """Release every model the operator holds (when its pool ends, or its worker goes)."""
        for _, value in operator_attributes(self.operator):
            if is_model_holder(value):
                with contextlib.suppress(Exception):  # shutting down: nothing left to report to
                    value.cleanup()

    def __del__(self) -> None:
        self.release()

    def _stats(self) -> dict[str, dict[str, Any]]:
        return {path: _counters(s.stats) for path, s in self._servings.items()}

    def process(self, frame: pd.DataFrame, rejects: list[Reject]) -> dict[str, Any]:
        """Run the operator on one chunk: its rows, its marker's counts and what else the driver needs."""
        before = self._stats()
        try:
            if self._step_error is not None:
                raise self._step_error
            out, counts = run_chunk(self.operator, frame, rejects, self.keys, self.media_root, self.provenance)
        except EngineDiedError as exc:
            self._engine_died(exc)
            raise
        except (UserError, RunStoppedError) as exc:
            # Ray wraps a worker's exception in its task error (its message a traceback); the driver
            # re-raises this one as it is, so the run ends with the project's one line and exit code.
            error = _pickled_error(exc)
            return {"worker": self.worker, "user_error": error}
        after = self._stats()
        delta = {p: _counter_delta(after[p], before[p]) for p in after}
        return {"out": out, "counts": counts, "worker": self.worker, "stats": delta, "user_error": None}


class ModelActor:
    """A model operator's Ray actor for the whole run: loads the model once, then takes chunks of any step."""

    def __init__(self, operator: OperatorABC, actor_settings: dict[str, Any], driver_folder: str) -> None:
        self.chunks = _ChunkWorker(operator, True, actor_settings, driver_folder)

    def ready(self) -> str:
        return self.chunks.worker

    def run(self, token: str, context: tuple[Any, ...], frame: pd.DataFrame, rejects: list[Reject]):
        """One chunk of the step ``context`` (storage, keys, step, fingerprint) names; after a restart too."""
        self.chunks.bind(token, *context)
        return self.chunks.process(frame, rejects)

    def release(self) -> None:
        self.chunks.release()


def enter_driver_folder(folder: str | None) -> None:
    """Run in the driver's working folder, so relative paths resolve as on the driver.

    Where that folder does not exist (a node that does not share it), the worker stays where it is:
    absolute paths still work there, and a relative one fails as the missing file it is.
    """
    if not folder:
        return
    with contextlib.suppress(OSError):  # also: this process's own folder was removed
        if os.getcwd() != folder:
            os.chdir(folder)


def _counters(stats: ServingStats) -> dict[str, Any]:
    """A serving's counters: the fixed fields and its ``extra`` ones (token budget, retry causes...)."""
    return {**{f: getattr(stats, f) for f in _STAT_FIELDS}, "extra": copy.deepcopy(stats.extra)}


def _counter_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What the numeric counters of ``after`` (nested dicts too) added since ``before``."""
    delta: dict[str, Any] = {}
    for name, value in after.items():
        if isinstance(value, dict):
            inner = _counter_delta(value, before.get(name) or {})
            if inner:
                delta[name] = inner
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value != before.get(name, 0):
            delta[name] = value - before.get(name, 0)
    return delta


def _add_counters(target: dict[str, Any], delta: dict[str, Any]) -> None:
    """Add a worker's counter delta into the driver's counters (``extra`` keys may be new there)."""
    for name, value in delta.items():
        if isinstance(value, dict):
            _add_counters(target.setdefault(name, {}), value)
        else:
            target[name] = target.get(name, 0) + value


def add_serving_counters(stats: ServingStats, delta: dict[str, Any]) -> None:
    """The driver's serving stats, plus what a worker's copy of the serving counted."""
    for name in _STAT_FIELDS:
        setattr(stats, name, getattr(stats, name) + delta.get(name, 0))
    _add_counters(stats.extra, delta.get("extra", {}))


def _set_cpu_threads(threads: int) -> None:
    """Threads for image decoding/preprocessing in this actor (Ray pins a 1-CPU actor to 1 thread).

    torch reads ``OMP_NUM_THREADS`` when it is imported, so it is imported here only when something
    already did: an actor whose serving never needs torch (the API backend) does not pay for it.
    """
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)  # read by torch when imported, inherited by the engine's processes
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def tensor_parallel_placement(bundles: int) -> dict[str, Any]:
    """Ray remote args of one actor of a tensor-parallel engine: its own placement group of one
    ``{"GPU": 1, "CPU": 1}`` bundle per rank, packed, that the engine's Ray workers are placed in."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.placement_group([{"GPU": 1, "CPU": 1}] * bundles, strategy="PACK")
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)}


def _pickled_error(exc: UserError | RunStoppedError) -> bytes:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        kind = RunStoppedError if isinstance(exc, RunStoppedError) else UserError
        return pickle.dumps(kind(f"{type(exc).__name__}: {exc}"))


_TASK_WORKERS: dict[str, _ChunkWorker] = {}


def submit_to_actor(actor: Any, token: str, context: Any, item: tuple[Any, ...]) -> Any:
    return actor.run.remote(token, context, *item)


def submit_task(task: Any, token: str, context: Any, item: tuple[Any, ...]) -> Any:
    return task.remote(token, context, *item)


def run_chunk_in_task(
    token: str, context: tuple[Any, ...], frame: pd.DataFrame, rejects: list[Reject]
) -> dict[str, Any]:
    """A task operator's chunk: one ``_ChunkWorker`` per worker process and step (so ``prepare`` runs once there)."""
    operator, storage, keys, step, fingerprint, driver_folder = context
    worker = _TASK_WORKERS.get(token)
    if worker is None:
        _TASK_WORKERS.clear()  # a worker process only ever needs the step it is running now
        worker = _TASK_WORKERS[token] = _ChunkWorker(operator, driver_folder=driver_folder)
    worker.bind(token, storage, keys, step, fingerprint)
    return worker.process(frame, rejects)
