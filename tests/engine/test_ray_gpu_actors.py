"""Model actors on Ray as a GPU run needs them, checked on a CPU-only local Ray.

What a vLLM operator's actors ask Ray for (GPUs = the engine's tensor parallel size, never 0; a
placement group for tensor parallelism > 1, as ``ray.data.llm`` builds it) is read from the options
the runner builds; what actors do (load the model when they start, set their CPU threads, release
the model when the pool ends, get replaced when their engine dies) is seen in a real Ray run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dataflow_mm import LocalModelVLMServing_hf, PromptedVQAGenerator
from dataflow_mm.engine.ray_pools import DEFAULT_CPU_THREADS_PER_ACTOR
from dataflow_mm.engine.ray_runner import RayRunner
from dataflow_mm.pipeline.base import PipelineABC
from dataflow_mm.serving.base import Completion, Conversation, EngineDiedError, SamplingParams
from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm
from dataflow_mm.storage.file_storage import FileStorage
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_jsonl

ray = pytest.importorskip("ray")


def vllm_operator(model_dir: Path, tensor_parallel_size: int = 1) -> PromptedVQAGenerator:
    serving = LocalModelVLMServing_vllm(str(model_dir), vllm_tensor_parallel_size=tensor_parallel_size)
    return PromptedVQAGenerator(serving)


def test_vllm_actors_reserve_their_tensor_parallel_gpus_and_never_zero(tiny_qwen_dir: Path) -> None:
    one_gpu = RayRunner().model_actor_options(vllm_operator(tiny_qwen_dir))
    assert one_gpu["num_gpus"] == 1 and "ray_remote_args_fn" not in one_gpu
    assert one_gpu["num_cpus"] == 1 and one_gpu["max_restarts"] == 3
    assert one_gpu["actor_settings"] == {"cpu_threads": DEFAULT_CPU_THREADS_PER_ACTOR}
    # 0 GPUs would let every vLLM actor use GPU 0: never for a vLLM operator.
    assert RayRunner(num_gpus_per_actor=0).model_actor_options(vllm_operator(tiny_qwen_dir))["num_gpus"] == 1
    assert RayRunner(num_gpus_per_actor=0.5).model_actor_options(vllm_operator(tiny_qwen_dir))["num_gpus"] == 0.5
    # Other model operators keep what they are given (default: no GPU).
    hf = PromptedVQAGenerator(LocalModelVLMServing_hf(str(tiny_qwen_dir)))
    assert RayRunner().model_actor_options(hf)["num_gpus"] == 0
    assert RayRunner(num_gpus_per_actor=1, cpu_threads_per_actor=6).model_actor_options(hf) == {
        "num_cpus": 1,
        "max_restarts": 3,
        "actor_settings": {"cpu_threads": 6},
        "num_gpus": 1,
    }


def test_tensor_parallel_actors_get_a_placement_group_of_one_gpu_bundle_per_rank(
    ray_cluster: Any, tiny_qwen_dir: Path
) -> None:
    options = RayRunner().model_actor_options(vllm_operator(tiny_qwen_dir, tensor_parallel_size=2))
    assert options["num_gpus"] == 0  # the placement group holds the GPUs, as in ray.data.llm
    assert options["actor_settings"]["distributed_executor_backend"] == "ray"
    remote_args = options["ray_remote_args_fn"]()  # called by Ray Data once per actor
    strategy = remote_args["scheduling_strategy"]
    group = strategy.placement_group
    try:
        assert group.bundle_specs == [{"GPU": 1, "CPU": 1}, {"GPU": 1, "CPU": 1}]
        assert strategy.placement_group_capture_child_tasks is True
    finally:
        ray.util.remove_placement_group(group)


class EngineServing(FakeVLMServing):
    """A stand-in engine: starts in ``load`` (logging its pid and CPU threads), stops in ``cleanup``,
    and dies once (the first chat after ``die_marker`` is created by nobody yet)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(load_images=False)
        self.log_dir = log_dir
        self.started = False

    def _log(self, name: str, text: str) -> None:
        with open(os.path.join(self.log_dir, name), "a", encoding="utf-8") as handle:
            handle.write(text + "\n")

    def load(self) -> None:
        import torch

        self.started = True
        self._log("starts.log", f"{os.getpid()} {torch.get_num_threads()} {os.environ.get('OMP_NUM_THREADS')}")

    def cleanup(self) -> None:
        if self.started:
            self._log("stops.log", str(os.getpid()))
        self.started = False

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        assert self.started, "the engine started with the actor, before its first chunk"
        marker = os.path.join(self.log_dir, "died")
        if not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            self.cleanup()
            raise EngineDiedError("the stand-in engine stopped")
        return super()._chat_batch(conversations, sampling)


class OneStep(PipelineABC):
    def __init__(self, operator: PromptedVQAGenerator, table: Path, cache: Path) -> None:
        self.operator = operator
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="one", chunk_size=1)

    def forward(self) -> None:
        self.operator.run(storage=self.storage.step(), input_image_key=None)


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_actors_start_their_engine_set_threads_stop_it_at_the_end_and_are_replaced_when_it_dies(
    ray_cluster: Any, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    table = write_jsonl(tmp_path / "table.jsonl", [{"id": i, "prompt": f"question {i}"} for i in range(3)])
    runner = RayRunner(actors_per_model_operator=1, cpu_threads_per_actor=2)
    summary = OneStep(PromptedVQAGenerator(EngineServing(str(logs))), table, tmp_path / "cache").run(runner=runner)

    # The run did not stop: the chunk whose engine died was retried on a fresh actor.
    assert (summary.rows_in, summary.rows_out, summary.rows_with_error) == (3, 3, 0)
    starts = _lines(logs / "starts.log")
    died_in = (logs / "died").read_text()
    assert len(starts) == 2 and starts[0][0] == died_in and starts[1][0] != died_in
    assert all(threads == "2" and omp == "2" for _, threads, omp in starts)
    # The surviving actor stops its engine when the pool ends (Ray calls it after the last chunk).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [starts[1][0]] not in _lines(logs / "stops.log"):
        time.sleep(0.2)
    assert [starts[1][0]] in _lines(logs / "stops.log")


class TwoSteps(PipelineABC):
    """One model operator asked twice (step 2 answers step 1's answers), as a pipeline with a repeated stage."""

    def __init__(self, operator: PromptedVQAGenerator, table: Path, cache: Path) -> None:
        self.operator = operator
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="two", chunk_size=2)

    def forward(self) -> None:
        self.operator.run(storage=self.storage.step(), input_image_key=None, output_answer_key="first")
        self.operator.run(
            storage=self.storage.step(), input_image_key=None, input_prompt_key="first", output_answer_key="second"
        )


def test_a_model_operators_actors_are_kept_for_the_whole_run(ray_cluster: Any, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "died").write_text("no death in this test")
    table = write_jsonl(tmp_path / "table.jsonl", [{"id": i, "prompt": f"question {i}"} for i in range(4)])
    runner = RayRunner(actors_per_model_operator=1)
    summary = TwoSteps(PromptedVQAGenerator(EngineServing(str(logs))), table, tmp_path / "cache").run(runner=runner)
    assert [s.rows_out for s in summary.steps] == [4, 4] and summary.rows_with_error == 0
    # One actor served both steps: its model loaded once for the run, and was released once at its end.
    assert len(_lines(logs / "starts.log")) == 1
    assert runner.workers_by_step[1] == runner.workers_by_step[2] and len(runner.workers_by_step[1]) == 1
    assert _lines(logs / "stops.log") == [[_lines(logs / "starts.log")[0][0]]]
