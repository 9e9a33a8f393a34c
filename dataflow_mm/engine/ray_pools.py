"""The model actors of a Ray run: one pool per model-holding operator, kept for the whole run.

Each actor loads the operator's models (starts its engine) when it starts and keeps them until the
pool is released after the operator's last step. An actor of a vLLM operator reserves the engine's
tensor parallel size in GPUs (never 0: Ray does not hide the GPUs from a 0-GPU actor, so every
engine would land on GPU 0); with tensor parallelism > 1 it reserves nothing itself and gets a
placement group of one GPU bundle per rank (as ``ray.data.llm``'s vLLM stage does), which vLLM's
Ray executor fills; the group is removed when the pool is released (a later tensor-parallel pool
would otherwise wait for GPUs nobody uses). An actor of another model operator (a scorer, the
transformers backend) reserves ``DEFAULT_MODEL_GPU_SHARE`` of a GPU when the cluster has GPUs, so
that Ray gives it one GPU and counts it there (with 0 every such actor would use GPU 0 unaccounted);
an operator that only calls an API reserves none. Each actor sets its CPU threads before the model
loads, and an actor whose engine died exits so that Ray starts a fresh one and retries its chunk.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dataflow_mm.common.errors import UserError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.engine.ray_workers import (
    ModelActor,
    holds_model,
    is_model_holder,
    operator_attributes,
    servings_of,
    tensor_parallel_placement,
)

log = get_logger("engine.ray")

DEFAULT_CPU_THREADS_PER_ACTOR = 4  # image decoding and preprocessing threads of a model actor
DEFAULT_MODEL_GPU_SHARE = 0.25  # a non-vLLM model actor's GPU reservation on a cluster with GPUs (4 per GPU)


@dataclass(frozen=True)
class ActorSettings:
    """How many actors each model operator gets and what each reserves (``RayRunner``'s arguments)."""

    actors_per_model_operator: int = 1
    num_gpus_per_actor: float | None = None
    num_cpus_per_actor: float = 1
    cpu_threads_per_actor: int | None = None
    max_actor_restarts: int = 3
    actor_start_timeout_s: int = 3600

    def options(self, operator: OperatorABC, cluster_gpus: float = 0.0) -> dict[str, Any]:
        """The Ray resource options of the operator's actors, and the settings each actor applies when
        it starts (``actor_settings``: CPU threads, vLLM's executor for tensor parallelism).
        ``cluster_gpus``: the cluster's GPUs (a non-vLLM model actor reserves a share of one when > 0)."""
        servings = servings_of(operator).values()
        tensor_parallel = max((s.tensor_parallel_size for s in servings if s.backend_name == "vllm"), default=0)
        threads = self.cpu_threads_per_actor or max(int(self.num_cpus_per_actor), DEFAULT_CPU_THREADS_PER_ACTOR)
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus_per_actor,
            "max_restarts": self.max_actor_restarts,
            "actor_settings": {"cpu_threads": threads},
        }
        if tensor_parallel > 1:
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
        elif self.num_gpus_per_actor is not None:
            options["num_gpus"] = self.num_gpus_per_actor
        elif cluster_gpus > 0 and uses_local_model(operator):
            options["num_gpus"] = DEFAULT_MODEL_GPU_SHARE
        else:
            options["num_gpus"] = 0
        return options


def uses_local_model(operator: OperatorABC) -> bool:
    """True when the operator loads a model here (a scorer, a local serving), not only an API's."""
    for _, value in operator_attributes(operator):
        if is_model_holder(value) and getattr(value, "backend_name", None) != "api":
            return True
    return False


def check_sendable(ray: Any, operator: OperatorABC, payload: Any) -> None:
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


class ActorPools:
    """The model operators' actor pools of one run, by operator identity."""

    def __init__(self, ray: Any, settings: ActorSettings) -> None:
        self.ray = ray
        self.settings = settings
        self._pools: dict[int, tuple[OperatorABC, list[Any]]] = {}
        self._groups: dict[int, list[Any]] = {}  # the placement groups made for a pool's actors
        self._lock = threading.Lock()  # streaming steps start their pools from their own threads

    def actors(self, operator: OperatorABC) -> list[Any]:
        """The operator's actors, started now if needed (each loads the model in its constructor)."""
        with self._lock:
            return self._started(operator)

    def _started(self, operator: OperatorABC) -> list[Any]:
        if id(operator) not in self._pools:
            check_sendable(self.ray, operator, operator)
            options = self.settings.options(operator, self.cluster_gpus())
            settings = options.pop("actor_settings")
            remote_args_fn = options.pop("ray_remote_args_fn", None)
            # An actor whose engine died exits; Ray restarts it and retries the chunk it had (max_task_retries).
            options["max_task_retries"] = options["max_restarts"]
            actor_class = self.ray.remote(ModelActor)
            actors, groups = [], self._groups.setdefault(id(operator), [])
            for _ in range(self.settings.actors_per_model_operator):
                placement = remote_args_fn() if remote_args_fn else {}
                group = getattr(placement.get("scheduling_strategy"), "placement_group", None)
                if group is not None:
                    groups.append(group)
                actors.append(actor_class.options(**options, **placement).remote(operator, settings, os.getcwd()))
            self._pools[id(operator)] = (operator, actors)
        return self._pools[id(operator)][1]

    def cluster_gpus(self) -> float:
        """The connected cluster's GPUs (Ray's count; no CUDA call here)."""
        return float(self.ray.cluster_resources().get("GPU", 0.0))

    def ready(self, operator: OperatorABC) -> list[Any]:
        """The operator's actors once every one has loaded its model (so each gets its share of chunks)."""
        actors = self.actors(operator)
        try:
            self.ray.get([actor.ready.remote() for actor in actors], timeout=self.settings.actor_start_timeout_s)
        except self.ray.exceptions.GetTimeoutError as exc:
            raise UserError(
                f"{operator.name}: its {len(actors)} Ray actor(s) did not start within "
                f"{self.settings.actor_start_timeout_s} s; the cluster may not have the CPUs/GPUs they reserve"
            ) from exc
        return actors

    def fit(self, operators: Iterable[OperatorABC]) -> bool:
        """Whether the pools of ``operators`` and of the pools started already fit the cluster at once,
        with a CPU to spare for task steps (tensor-parallel pools never count as fitting)."""
        wanted = {"CPU": 1.0, "GPU": 0.0}
        owners = {id(op): op for op in operators if holds_model(op)}
        owners.update({key: owner for key, (owner, _) in self._pools.items()})
        gpus = self.cluster_gpus()
        for owner in owners.values():
            options = self.settings.options(owner, gpus)
            if "ray_remote_args_fn" in options:
                return False  # tensor parallelism: placement groups are only reserved when the step comes
            wanted["CPU"] += self.settings.actors_per_model_operator * options["num_cpus"]
            wanted["GPU"] += self.settings.actors_per_model_operator * options["num_gpus"]
        total = self.ray.cluster_resources()
        return all(total.get(name, 0.0) >= amount for name, amount in wanted.items())

    def prestart(self, operator: OperatorABC) -> None:
        """Start a later step's actors now (their models load in the background) when they fit."""
        if id(operator) not in self._pools and holds_model(operator) and self.fit([operator]):
            self.actors(operator)

    def release(self, operator: OperatorABC) -> None:
        """Stop the operator's actors, each releasing its model first."""
        with self._lock:
            _, actors = self._pools.pop(id(operator), (operator, []))
            groups = self._groups.pop(id(operator), [])
        if actors:
            with contextlib.suppress(Exception):  # an actor that cannot answer is killed all the same
                self.ray.get([actor.release.remote() for actor in actors], timeout=60)
            for actor in actors:
                self.ray.kill(actor)
        for group in groups:  # the GPUs the tensor-parallel engine's workers held go back to the cluster
            with contextlib.suppress(Exception):
                self.ray.util.remove_placement_group(group)

    def release_all(self) -> None:
        for operator, _ in list(self._pools.values()):
            self.release(operator)
