"""The Ray runner: the same compiled pipeline and the same step executor, chunks transformed by Ray workers.

Each step runs through the step executor (``engine.step_executor``) exactly as on the local runner:
the driver reads the step's input chunks (malformed JSONL lines become rejects with their line
numbers), finds through the storage's step transaction which chunks are done already (a chunk
whose marker, media or input lines no longer match is redone), writes each finished chunk's rows
and marker, and commits the step file, rejects, extra outputs and manifest. Only the transform of a
chunk runs on Ray (:class:`RayTransformer`): operators that hold a model (a VLM serving or a
scorer) on their own actors (``actors_per_model_operator`` of them, see ``engine.ray_pools``),
started once per run and kept until the operator's last step; the others as Ray tasks, as many
at once as the cluster has CPUs. Every actor or task slot has one chunk in flight, and chunks are
read as the slots take them, so a big input never sits whole in memory or in the object store.

Steps stream into each other as on the local runner (``engine.streaming``): step k+1 sends chunk
i to its workers as soon as step k has written it. That needs every model operator's actors up at
once with a CPU to spare for task steps; when they do not fit (e.g. two vLLM operators on one
GPU), steps run one after another, each operator's actors released after its last step and later
steps' actors started early when they fit. Either way every step file is materialized where the
local runner puts it, byte for byte, and resume works across runners.

Every path (input table, cache folder, images) must be readable and writable under the same name
on every node: one machine, or a shared filesystem (NFS, Lustre, a FUSE-mounted bucket). The
driver reads and writes every step file itself; the workers read images and write drawn images
and media. Ray workers do not start in the driver's working folder, so the driver sends it and
every worker runs its chunks there: a relative image path in a row, the media root and the model
path mean on every node what they mean on the driver, and rows keep the relative paths they have
locally (making them absolute would change the step files).
"""

from __future__ import annotations

import copy
import functools
import os
import pickle
import queue
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import ConfigError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.operator import OperatorABC, OperatorCall
from dataflow_mm.core.results import StepResult
from dataflow_mm.engine.ray_pools import ActorPools, ActorSettings, check_sendable
from dataflow_mm.engine.ray_workers import (
    add_serving_counters,
    holds_model,
    run_chunk_in_task,
    servings_of,
    submit_task,
    submit_to_actor,
)
from dataflow_mm.engine.runner import Runner
from dataflow_mm.engine.step_executor import execute_step
from dataflow_mm.engine.streaming import DEFAULT_QUEUE_CHUNKS, can_stream, execute_streaming
from dataflow_mm.storage.step import StepChunk

if TYPE_CHECKING:
    import pandas as pd


log = get_logger("engine.ray")


class RayRunner(Runner):
    """Executes a compiled pipeline on Ray; the operators are the same objects as in-process.

    Args:
        address: Ray cluster to join ("auto", "ray://host:10001", ...); None starts a local Ray.
            A Ray already initialized in this process is used as it is.
        num_cpus: CPUs of a local Ray started here (ignored when joining a cluster).
        actors_per_model_operator: actors in the pool of each model-holding operator (one model copy each).
        num_gpus_per_actor: GPUs each of those actors reserves (fractions share a GPU). Default: a vLLM
            operator's tensor parallel size, 0 for other operators. Never 0 for vLLM.
        num_cpus_per_actor: CPUs each of those actors reserves.
        cpu_threads_per_actor: CPU threads of each model actor (torch, OpenMP) for image preprocessing;
            default ``max(num_cpus_per_actor, DEFAULT_CPU_THREADS_PER_ACTOR)``.
        max_actor_restarts: how often Ray replaces a model actor that died (e.g. its engine did).
        batch_size: rows per chunk sent to a worker, i.e. per batched model call; default: the storage's
            ``chunk_size``, which keeps chunk-level resume compatible with the in-process runner.
        ray_init_kwargs: more ``ray.init`` arguments (``runtime_env``, ``object_store_memory``...).
        shutdown: shut Ray down after the run when this runner started it.
        actor_start_timeout_s: how long to wait for a model operator's actors to start and load their
            models (longer means the cluster cannot place them, e.g. not enough GPUs).
        streaming: stream chunks from step to step (as the local runner) when every model operator's
            actors fit the cluster at once with a CPU to spare; False: one step after another.
        queue_chunks: finished chunks that may wait between two streaming steps.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        actors_per_model_operator: int = 1,
        num_gpus_per_actor: float | None = None,
        num_cpus_per_actor: float = 1,
        cpu_threads_per_actor: int | None = None,
        max_actor_restarts: int = 3,
        batch_size: int | None = None,
        ray_init_kwargs: dict[str, Any] | None = None,
        shutdown: bool = True,
        actor_start_timeout_s: int = 3600,
        streaming: bool = True,
        queue_chunks: int = DEFAULT_QUEUE_CHUNKS,
    ) -> None:
        if actors_per_model_operator < 1:
            raise ConfigError(f"actors_per_model_operator must be an integer >= 1, not {actors_per_model_operator}")
        if (num_gpus_per_actor or 0) < 0 or num_cpus_per_actor < 0:
            raise ConfigError("num_gpus_per_actor and num_cpus_per_actor must be >= 0")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, not {batch_size}")
        self.address = address
        self.num_cpus = num_cpus
        self.batch_size = batch_size
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.shutdown = shutdown
        self.streaming = streaming
        self.queue_chunks = queue_chunks
        self.actor_settings = ActorSettings(
            actors_per_model_operator,
            num_gpus_per_actor,
            num_cpus_per_actor,
            cpu_threads_per_actor,
            max_actor_restarts,
            actor_start_timeout_s,
        )
        self.workers_by_step: dict[int, set[str]] = {}

    def pools_fit(self, operators: list[OperatorABC]) -> bool:
        """Whether every model operator's actors fit the connected cluster at once with a CPU to spare
        (then the steps stream into each other)."""
        ray = require("ray", extra="ray", package="ray[data]")
        return ActorPools(ray, self.actor_settings).fit(operators)

    def model_actor_options(self, operator: OperatorABC) -> dict[str, Any]:
        """The Ray resource options of a model operator's actors (see ``ActorSettings.options``)."""
        return self.actor_settings.options(operator)

    # -- Ray ----------------------------------------------------------------------------------
    def _connect(self) -> tuple[Any, bool]:
        """Ray, and whether this call started it."""
        ray = require("ray", extra="ray", package="ray[data]")
        if ray.is_initialized():
            return ray, False
        kwargs: dict[str, Any] = {"address": self.address, **self.ray_init_kwargs}
        if self.address is None and self.num_cpus is not None:
            kwargs["num_cpus"] = self.num_cpus
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", True)
        ray.init(**kwargs)
        resources = ray.cluster_resources()
        log.info(f"Ray started: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
        return ray, True

    def execute(self, calls: list[OperatorCall]) -> list[StepResult]:
        ray, started = self._connect()
        self._warn_about_relative_paths(ray, calls)
        calls = [self._with_batch_size(call) for call in calls]
        self.pools = ActorPools(ray, self.actor_settings)
        last_step = {id(call.operator): call.storage.output_step for call in calls}
        transformers = [
            functools.partial(RayTransformer, self, ray, [c.operator for c in calls[i + 1 :]], last_step)
            for i in range(len(calls))
        ]
        try:
            operators = [call.operator for call in calls]
            if self.streaming and len(calls) > 1 and can_stream(calls) and self.pools_fit(operators):
                return execute_streaming(calls, self.queue_chunks, transformers)
            return [execute_step(call, transformer=make) for call, make in zip(calls, transformers, strict=True)]
        finally:
            self.pools.release_all()
            for call in calls:
                call.storage.reset()
            if started and self.shutdown:
                ray.shutdown()

    def _with_batch_size(self, call: OperatorCall) -> OperatorCall:
        """The call with ``batch_size`` rows per chunk (a copy of its storage; the pipeline's own is left as it is)."""
        if self.batch_size is None or self.batch_size == call.storage.chunk_size:
            return call
        storage = copy.copy(call.storage)
        storage.chunk_size = self.batch_size
        return OperatorCall(call.operator, storage, call.keys)

    @staticmethod
    def _warn_about_relative_paths(ray: Any, calls: list[OperatorCall]) -> None:
        """On a multi-node cluster, relative paths need the driver's folder on every node."""
        if sum(1 for node in ray.nodes() if node.get("Alive")) < 2:
            return
        relative = sorted(
            {
                path
                for call in calls
                for path in (call.storage.first_entry_file_name, call.storage.cache_path)
                if not Path(path).is_absolute()
            }
        )
        if relative:
            log.info(
                f"relative paths {relative}: Ray workers run in the driver's folder '{os.getcwd()}', which must "
                "be on a filesystem every node mounts at the same place"
            )


class RayTransformer:
    """One step's chunks transformed on Ray: by the operator's actors, or by tasks (one slot per cluster CPU).

    Each slot (an actor, or a task's CPU) has at most one chunk in flight; the step executor keeps
    ``in_flight`` chunks going and writes them in chunk order.
    """

    def __init__(
        self,
        runner: RayRunner,
        ray: Any,
        later: list[OperatorABC],
        last_step: dict[int, int],
        call: OperatorCall,
        number: int,
        fingerprint: str,
    ) -> None:
        self.ray, self.pools, self.call, self.number = ray, runner.pools, call, number
        self.release_pool = last_step.get(id(call.operator)) == number
        self.workers = runner.workers_by_step.setdefault(number, set())
        self.servings = servings_of(call.operator)
        self._stats_lock = threading.Lock()
        token = uuid.uuid4().hex
        operator, storage, keys = call.operator, call.storage, call.keys
        for other in later:  # their actors load their models while this step runs, when they fit
            self.pools.prestart(other)
        if holds_model(operator):
            check_sendable(ray, operator, (storage, keys))
            context = ray.put((storage, keys, number, fingerprint))
            slots = [functools.partial(submit_to_actor, a, token, context) for a in self.pools.ready(operator)]
        else:
            payload = (operator, storage, keys, number, fingerprint, os.getcwd())
            check_sendable(ray, operator, payload)
            context = ray.put(payload)
            width = max(1, int(ray.cluster_resources().get("CPU", 1)))
            slots = [functools.partial(submit_task, ray.remote(run_chunk_in_task), token, context)] * width
        self.in_flight = len(slots)
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for slot in slots:
            self.idle.put(slot)

    def transform(self, chunk: StepChunk) -> tuple[pd.DataFrame, dict[str, Any]]:
        slot = self.idle.get()
        try:
            row = self.ray.get(slot((chunk.frame, chunk.rejects)))
        finally:
            self.idle.put(slot)
        if row["user_error"] is not None:
            raise pickle.loads(row["user_error"])
        with self._stats_lock:
            self.workers.add(row["worker"])
            for path, delta in row["stats"].items():
                if path in self.servings:
                    add_serving_counters(self.servings[path].stats, delta)
        return row["out"], row["counts"]

    def close(self) -> None:
        kind = "actor(s)" if holds_model(self.call.operator) else "worker process(es)"
        log.info(f"step {self.number} {self.call.operator.name}: {len(self.workers)} Ray {kind} transformed its chunks")
        if self.release_pool:
            self.pools.release(self.call.operator)
