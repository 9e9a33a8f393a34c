"""The Ray runner: the same compiled pipeline, each operator's chunks run by Ray tasks or model actors.

How one step runs (step k reads step file k and writes step file k+1, exactly as in-process):

1. **Read.** The driver reads the step's input with the project's own reader (``iter_table``), as
   in-process: malformed JSONL lines become rejects with their line numbers, rows are cut into the
   same chunks (``chunk_size`` rows), and chunks are read only as workers take them (one chunk in
   flight per worker), so a big input never sits whole in memory or in the object store.
2. **Run.** Each chunk (its DataFrame plus its rejects) goes to the next free worker, which calls
   the operator's ``run_chunk`` on it. Operators that hold a model (a VLM serving or a scorer) run
   on their own Ray actors (``actors_per_model_operator`` of them), started once per run: each
   loads the model (starts its engine) when it starts, and keeps it until the operator's last step
   of the run. Later steps' actors start while the current step runs when the cluster keeps a
   CPU for it besides them, so models load in the background. Other operators run as Ray tasks,
   as many at once as the cluster has CPUs. ``prepare`` runs once per actor and step, or once per
   worker process for tasks. An actor of a vLLM operator reserves the engine's tensor
   parallel size in GPUs (never 0: Ray does not hide the GPUs from a 0-GPU actor, so every engine
   would land on GPU 0); with tensor parallelism > 1 it reserves nothing itself and gets a
   placement group of one GPU bundle per rank (as ``ray.data.llm``'s vLLM stage does), which
   vLLM's Ray executor fills. Each actor sets its CPU threads (``cpu_threads_per_actor``) before
   the model loads, shuts its engine down when its pool ends, and an actor whose engine died
   exits so that Ray starts a fresh one (up to ``max_actor_restarts`` times) and retries its chunk.
3. **Write.** Each worker writes its finished chunk into the step's parts folder, with the same
   done-markers the in-process runner writes. Then the operator's own ``execute`` runs on the
   driver: it finds every chunk done, joins the parts in chunk order into
   ``{cache_path}/{prefix}_step{k+1}.{type}`` atomically, and writes rejects, manifest and extra
   outputs. So every step file is materialized where the local runner puts it (users inspect
   them, and the next step reads it), rows keep their input order, the summary is the same, and
   resume works across runners: a step completed, or stopped half-way, on one runner is skipped,
   or finished, on the other.

Steps still run one after another: step k+1 reads step k's joined file, whose hash is part of the
state its parts are kept under (resume); streaming chunks between steps needs the step executor
of issue #14 first.

Every path (input table, cache folder, images) must be readable and writable under the same name
on every node: one machine, or a shared filesystem (NFS, Lustre, a FUSE-mounted bucket). Ray workers
do not start in the driver's working folder, so the driver sends it (``driver_folder``) and every
worker runs its chunks there: a relative path (input table, cache path, extra outputs, an image
path in a row, the media root) means on every node what it means on the driver, and the step files
equal the local runner's.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import pickle
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataflow_mm.deps import require
from dataflow_mm.errors import ConfigError, StorageError, UserError
from dataflow_mm.logger import get_logger
from dataflow_mm.operators.base import OperatorABC, OperatorCall, StepResult
from dataflow_mm.operators.progress import StepProgress, count_rows
from dataflow_mm.runners.base import Runner
from dataflow_mm.runners.ray_workers import (
    ModelActor,
    add_serving_counters,
    holds_model,
    is_model_holder,
    operator_attributes,
    run_chunk_in_task,
    servings_of,
    submit_task,
    submit_to_actor,
    tensor_parallel_placement,
)
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.formats import iter_table
from dataflow_mm.storage.manifest import StepManifest, file_sha256
from dataflow_mm.storage.media_stamps import changed_media
from dataflow_mm.storage.parts import ChunkParts

if TYPE_CHECKING:
    from dataflow_mm.pipeline.base import PipelineABC

log = get_logger("runners.ray")

DEFAULT_CPU_THREADS_PER_ACTOR = 4  # image decoding and preprocessing threads of a model actor


# ---------------------------------------------------------------- the runner


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
    ) -> None:
        if actors_per_model_operator < 1:
            raise ConfigError(f"actors_per_model_operator must be an integer >= 1, not {actors_per_model_operator}")
        if (num_gpus_per_actor or 0) < 0 or num_cpus_per_actor < 0:
            raise ConfigError("num_gpus_per_actor and num_cpus_per_actor must be >= 0")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, not {batch_size}")
        self.address = address
        self.num_cpus = num_cpus
        self.actors_per_model_operator = actors_per_model_operator
        self.num_gpus_per_actor = num_gpus_per_actor
        self.num_cpus_per_actor = num_cpus_per_actor
        self.cpu_threads_per_actor = cpu_threads_per_actor
        self.max_actor_restarts = max_actor_restarts
        self.batch_size = batch_size
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.shutdown = shutdown
        self.actor_start_timeout_s = actor_start_timeout_s
        self.workers_by_step: dict[int, set[str]] = {}

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

    def execute(self, pipeline: PipelineABC, calls: list[OperatorCall]) -> list[StepResult]:
        ray, started = self._connect()
        self._warn_about_relative_paths(ray, calls)
        # A model operator's actors, kept until its last step of the run (by operator identity).
        self._pools: dict[int, tuple[OperatorABC, list[Any]]] = {}
        last_step = {id(call.operator): index for index, call in enumerate(calls)}
        try:
            results = []
            for index, call in enumerate(calls):
                result = self._execute_call(ray, call, calls[index + 1 :])
                log.info(result.describe())
                results.append(result)
                if last_step[id(call.operator)] == index:
                    self._release_pool(ray, call.operator)
        finally:
            for operator in [call.operator for call in calls]:
                self._release_pool(ray, operator)
            for call in calls:
                call.storage.reset()
            if started and self.shutdown:
                ray.shutdown()
        return results

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

    # -- one step -----------------------------------------------------------------------------
    def _execute_call(self, ray: Any, call: OperatorCall, later: list[OperatorCall]) -> StepResult:
        """Ray fills the step's parts folder; then the operator's own ``execute`` joins them (or skips the step)."""
        operator, keys = call.operator, call.keys
        storage = call.storage
        if self.batch_size is not None and self.batch_size != storage.chunk_size:
            storage = copy.copy(storage)  # a snapshot: the pipeline's own storage is left as it is
            storage.chunk_size = self.batch_size
        storage.check_writable()
        if not storage.input_path.is_file():
            raise StorageError(f"Input file does not exist or is not a file: '{storage.input_path}'")
        input_sha = file_sha256(storage.input_path)
        current = operator.fingerprint(keys)
        manifest = StepManifest.load(storage.output_path)
        ray_seconds = 0.0
        if manifest is None or not manifest.matches(current, input_sha, storage.output_path):
            started = time.perf_counter()
            for next_call in later:  # their actors load their models while this step runs, when they fit
                self._prestart_pool(ray, next_call.operator)
            self._fill_parts(ray, call.operator, storage, keys, current, input_sha)
            ray_seconds = time.perf_counter() - started
        # Every chunk is done now, so this only joins the parts into the step file, writes rejects, manifest
        # and extra outputs, exactly as in-process (or it finds the step complete and skips it).
        result = operator.execute(storage, **keys)
        assert result is not None
        result.seconds += ray_seconds
        return result

    def model_actor_options(self, operator: OperatorABC) -> dict[str, Any]:
        """The Ray resource options of a model operator's actors, and the settings each actor
        applies when it starts (``actor_settings``: CPU threads, vLLM's executor for tensor parallelism)."""
        tensor_parallel = max(
            (s.tensor_parallel_size for s in servings_of(operator).values() if s.backend_name == "vllm"), default=0
        )
        threads = self.cpu_threads_per_actor or max(int(self.num_cpus_per_actor), DEFAULT_CPU_THREADS_PER_ACTOR)
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus_per_actor,
            "max_restarts": self.max_actor_restarts,
            "actor_settings": {"cpu_threads": threads},
        }
        if tensor_parallel > 1:
            # As ray.data.llm's vLLM stage: the actor reserves no GPU itself; its placement group holds one
            # GPU bundle per rank, and vLLM's Ray executor places the engine's workers in it.
            options["num_gpus"] = 0
            options["ray_remote_args_fn"] = functools.partial(tensor_parallel_placement, tensor_parallel)
            options["actor_settings"]["distributed_executor_backend"] = "ray"
        elif tensor_parallel == 1:
            if self.num_gpus_per_actor == 0:
                log.warning(
                    f"{operator.name}: a vLLM actor needs its GPU reserved (Ray gives a 0-GPU actor every GPU, so all "
                    "engines would share GPU 0); reserving 1"
                )
            options["num_gpus"] = self.num_gpus_per_actor or 1
        else:
            options["num_gpus"] = self.num_gpus_per_actor or 0
        return options

    @staticmethod
    def _checked_for_workers(ray: Any, operator: OperatorABC, payload: Any) -> None:
        """Release the driver's models and check ``payload`` pickles here, so that a failure names the operator."""
        for _, value in operator_attributes(operator):
            if is_model_holder(value):
                value.cleanup()  # the driver never needs the model: workers load their own copy
        try:
            ray.cloudpickle.dumps(payload)
        except Exception as exc:
            raise UserError(
                f"{operator.name} cannot be sent to Ray workers ({type(exc).__name__}: {exc}). Its attributes "
                "(serving, scorer, ...) must be picklable before they load anything: no open locks, clients or models."
            ) from exc

    # -- model actors, kept for the run ------------------------------------------------------
    def _pool(self, ray: Any, operator: OperatorABC) -> list[Any]:
        """The operator's actors, started now if needed (each loads the model in its constructor)."""
        if id(operator) not in self._pools:
            self._checked_for_workers(ray, operator, operator)
            options = self.model_actor_options(operator)
            settings = options.pop("actor_settings")
            remote_args_fn = options.pop("ray_remote_args_fn", None)
            # An actor whose engine died exits; Ray restarts it and retries the chunk it had (max_task_retries).
            options["max_task_retries"] = options["max_restarts"]
            actor_class = ray.remote(ModelActor)
            self._pools[id(operator)] = (
                operator,
                [
                    actor_class.options(**options, **(remote_args_fn() if remote_args_fn else {})).remote(
                        operator, settings, os.getcwd()
                    )
                    for _ in range(self.actors_per_model_operator)
                ],
            )
        return self._pools[id(operator)][1]

    def _prestart_pool(self, ray: Any, operator: OperatorABC) -> None:
        """Start a later step's actors now when the cluster keeps a CPU for this step's tasks besides them."""
        if id(operator) in self._pools or not holds_model(operator):
            return
        options = self.model_actor_options(operator)
        if "ray_remote_args_fn" in options:
            return  # tensor parallelism: placement groups are only reserved when the step comes
        wanted = {"CPU": 1.0, "GPU": 0.0}
        for other in [operator, *(owner for owner, _ in self._pools.values())]:
            other_options = self.model_actor_options(other)
            wanted["CPU"] += self.actors_per_model_operator * other_options["num_cpus"]
            wanted["GPU"] += self.actors_per_model_operator * other_options["num_gpus"]
        total = ray.cluster_resources()
        if all(total.get(name, 0.0) >= amount for name, amount in wanted.items()):
            self._pool(ray, operator)

    def _release_pool(self, ray: Any, operator: OperatorABC) -> None:
        """Stop the operator's actors, each releasing its model first."""
        _, actors = self._pools.pop(id(operator), (operator, []))
        if not actors:
            return
        with contextlib.suppress(Exception):  # an actor that cannot answer is killed all the same
            ray.get([actor.release.remote() for actor in actors], timeout=60)
        for actor in actors:
            ray.kill(actor)

    def _ready_actors(self, ray: Any, operator: OperatorABC) -> list[Any]:
        """The operator's actors once every one has loaded its model (so each gets its share of chunks)."""
        actors = self._pool(ray, operator)
        try:
            ray.get([actor.ready.remote() for actor in actors], timeout=self.actor_start_timeout_s)
        except ray.exceptions.GetTimeoutError as exc:
            raise UserError(
                f"{operator.name}: its {len(actors)} Ray actor(s) did not start within {self.actor_start_timeout_s} s; "
                "the cluster may not have the CPUs/GPUs they reserve"
            ) from exc
        return actors

    @staticmethod
    def _dispatch(ray: Any, slots: list[Any], chunks: Iterator[tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
        """Each chunk to the next free slot (``slot(chunk)`` submits it), at most one chunk per slot in flight,
        so chunks are read as the workers take them and no chunk waits behind a busy actor."""
        idle, running = list(slots), {}
        while True:
            while idle and (item := next(chunks, None)) is not None:
                slot = idle.pop()
                running[slot(item)] = slot
            if not running:
                return
            (ready,), _ = ray.wait(list(running), num_returns=1)
            idle.append(running.pop(ready))
            yield ray.get(ready)

    def _fill_parts(
        self, ray: Any, operator: OperatorABC, storage: FileStorage, keys: dict[str, Any], current: str, input_sha: str
    ) -> None:
        """Process every chunk not done yet on Ray; each worker writes its chunks' parts and done-markers."""
        step = storage.output_step
        # The parts state of OperatorABC._run_step: the parts written here are the ones it finds done.
        state = {"fingerprint": current, "input_sha256": input_sha, "chunk_size": storage.chunk_size}
        parts = ChunkParts(storage.output_path, state)
        done = frozenset(parts.indices()) if parts.open() else frozenset()
        done = frozenset(i for i in done if not changed_media((parts.done(i) or {}).get("media", {})))
        if done:
            log.info(f"step {step} {operator.name}: resuming after {len(done)} completed chunk(s)")
        progress = StepProgress(f"step {step} {operator.name}", count_rows(storage.input_path, storage.input_type))
        progress.update(sum((parts.done(i) or {}).get("rows_in", 0) for i in done))
        model = holds_model(operator)
        # The driver reads the chunks (as in-process) as the workers take them; each worker writes its parts.
        chunks = (
            (index, chunk.frame, chunk.rejects)
            for index, chunk in enumerate(iter_table(storage.input_path, storage.input_type, storage.chunk_size))
            if index not in done
        )
        token = uuid.uuid4().hex
        if model:
            self._checked_for_workers(ray, operator, (storage, keys, state))
            context = ray.put((storage, keys, state, step))
            slots = [
                functools.partial(submit_to_actor, actor, token, context) for actor in self._ready_actors(ray, operator)
            ]
        else:
            payload = (operator, storage, keys, state, step, os.getcwd())
            self._checked_for_workers(ray, operator, payload)
            context = ray.put(payload)
            task = ray.remote(run_chunk_in_task)
            width = max(1, int(ray.cluster_resources().get("CPU", 1)))
            slots = [functools.partial(submit_task, task, token, context)] * width
        rows = self._dispatch(ray, slots, chunks)
        servings = servings_of(operator)
        workers: set[str] = set()
        try:
            for row in rows:
                if row["user_error"] is not None:
                    raise pickle.loads(row["user_error"])
                workers.add(row["worker"])
                for path, delta in json.loads(row["stats"]).items():
                    if path in servings:
                        add_serving_counters(servings[path].stats, delta)
                progress.update(int(row["rows_in"]))
        finally:
            progress.close()
        self.workers_by_step[step] = workers
        kind = "actor(s)" if model else "worker process(es)"
        log.info(f"step {step} {operator.name}: {len(workers)} Ray {kind} processed the chunks not done before")
