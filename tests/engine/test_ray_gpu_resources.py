"""What model actors reserve on a cluster with GPUs, and that releasing a pool gives it all back.

A local CPU-only Ray that declares 2 GPUs (Ray counts declared GPUs like real ones: it reserves and
frees them, without touching any device) runs the real ``ActorPools``: a tensor-parallel vLLM pool's
placement group is removed when the pool is released (another tensor-parallel pool then starts at
once instead of waiting out the start timeout), and a scorer-like model actor reserves a share of
a GPU (not 0) so Ray assigns and counts it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dataflow_mm import PromptedVQAGenerator
from dataflow_mm.engine.ray_pools import DEFAULT_MODEL_GPU_SHARE, ActorPools, ActorSettings
from tests.support.fake_serving import FakeVLMServing

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[Any]:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=3, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


class TensorParallelServing(FakeVLMServing):
    """Looks like a vLLM serving with tensor parallelism 2 to the runner; answers like the fake one."""

    backend_name = "vllm"
    tensor_parallel_size = 2

    def __init__(self) -> None:
        super().__init__(load_images=False)
        self.engine_kwargs: dict[str, Any] = {}


class ScorerServing(FakeVLMServing):
    """A local model (not an API, not vLLM): the transformers backend or a scorer."""

    backend_name = "hf"


def wait_for(condition: Any, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def gpus_free() -> float:
    return ray.available_resources().get("GPU", 0.0)


def group_states() -> dict[str, str]:
    return {group_id: entry["state"] for group_id, entry in ray.util.placement_group_table().items()}


def test_a_tensor_parallel_pools_placement_group_is_removed_on_release(gpu_cluster: Any) -> None:
    settings = ActorSettings(actor_start_timeout_s=60)
    pools = ActorPools(ray, settings)
    operator = PromptedVQAGenerator(TensorParallelServing())
    before = set(group_states())
    pools.ready(operator)
    created = {g: s for g, s in group_states().items() if g not in before}
    assert list(created.values()) == ["CREATED"]  # one group of two GPU bundles for the one actor
    (group_id,) = created
    assert ray.util.placement_group_table()[group_id]["bundles"] == {
        0: {"GPU": 1.0, "CPU": 1.0},
        1: {"GPU": 1.0, "CPU": 1.0},
    }
    assert wait_for(lambda: gpus_free() == 0.0)

    pools.release(operator)
    assert wait_for(lambda: group_states()[group_id] == "REMOVED")
    assert wait_for(lambda: gpus_free() == 2.0)
    # A second tensor-parallel pool gets the GPUs back at once.
    again = PromptedVQAGenerator(TensorParallelServing())
    second = ActorPools(ray, ActorSettings(actor_start_timeout_s=20))
    second.ready(again)
    second.release_all()
    assert wait_for(lambda: gpus_free() == 2.0)
    assert all(state == "REMOVED" for g, state in group_states().items() if g not in before)


def test_scorer_actors_reserve_a_share_of_a_gpu_and_give_it_back(gpu_cluster: Any) -> None:
    settings = ActorSettings(actors_per_model_operator=2, actor_start_timeout_s=60)
    pools = ActorPools(ray, settings)
    operator = PromptedVQAGenerator(ScorerServing(load_images=False))
    assert settings.options(operator, cluster_gpus=2)["num_gpus"] == DEFAULT_MODEL_GPU_SHARE
    assert settings.options(operator, cluster_gpus=0)["num_gpus"] == 0  # a CPU cluster: none to reserve
    actors = pools.ready(operator)
    assert len(actors) == 2
    assert wait_for(lambda: gpus_free() == 2.0 - 2 * DEFAULT_MODEL_GPU_SHARE)
    gpu_ids = ray.get([actor.__ray_call__.remote(lambda self: ray.get_gpu_ids()) for actor in actors])
    assert all(len(ids) == 1 for ids in gpu_ids)  # Ray assigned each actor a GPU (CUDA_VISIBLE_DEVICES)
    pools.release(operator)
    assert wait_for(lambda: gpus_free() == 2.0)


def test_an_api_operator_reserves_no_gpu(gpu_cluster: Any) -> None:
    from dataflow_mm.serving.api_serving import APIVLMServing_openai

    serving = APIVLMServing_openai("http://127.0.0.1:9/v1", "model", api_key_env=None)
    assert ActorSettings().options(PromptedVQAGenerator(serving), cluster_gpus=2)["num_gpus"] == 0
    assert (
        ActorSettings(num_gpus_per_actor=0.5).options(PromptedVQAGenerator(serving), cluster_gpus=2)["num_gpus"] == 0.5
    )
