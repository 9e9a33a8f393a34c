"""The Ray Data runner on CPU: the region-caption pipeline on a tiny Qwen2.5-VL gives the same rows, rejects
and summary as the in-process runner; model operators run in actor pools that load the model once per actor.

One local Ray (2 CPUs) serves the whole session; the expensive pipeline runs happen once per module.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

from dataflow_mm import LocalModelVLMServing_hf, PromptedVQAGenerator
from dataflow_mm.common.errors import ModelNotAvailableError
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.engine import get_runner
from dataflow_mm.engine.ray_runner import RayRunner
from dataflow_mm.engine.ray_workers import holds_model
from dataflow_mm.pipeline.base import PipelineABC
from dataflow_mm.pipeline.script import add_runner_args, runner_from_args
from dataflow_mm.pipeline.templates import load_pipeline_script
from dataflow_mm.storage.file_storage import FileStorage
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_jsonl, write_region_caption_table

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"


def load_script() -> ModuleType:
    return load_pipeline_script("image_region_caption_pipeline", "image_region_caption_pipeline_for_ray")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def as_set(rows: list[dict[str, Any]]) -> set[tuple[Any, str]]:
    return {(row["id"], json.dumps(row, sort_keys=True)) for row in rows}


# ---------------------------------------------------------------- helpers sent to Ray workers (pickled by value)


class LoadCountingServing(LocalModelVLMServing_hf):
    """The transformers backend, appending its process id to a file each time it really loads the model."""

    def __init__(self, *args: Any, load_log: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.load_log = load_log

    def load(self) -> None:
        if self.model is None:
            with open(self.load_log, "a", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")
        super().load()


class PrepareCountingVQA(PromptedVQAGenerator):
    """PromptedVQAGenerator that logs ``prepare`` calls and the process of each chunk."""

    def __init__(self, serving: Any, log_dir: str) -> None:
        super().__init__(serving)
        self.log_dir = log_dir
        self.fail_after_chunks: int | None = None  # not a parameter: the fingerprint stays the same

    def _chunks_done(self) -> int:
        path = os.path.join(self.log_dir, "chunks.log")
        return len(open(path, encoding="utf-8").read().splitlines()) if os.path.exists(path) else 0

    def prepare(self, storage: FileStorage) -> None:
        super().prepare(storage)
        with open(os.path.join(self.log_dir, "prepare.log"), "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        if self.fail_after_chunks is not None and self._chunks_done() >= self.fail_after_chunks:
            raise KeyboardInterrupt  # a run stopped half-way
        with open(os.path.join(self.log_dir, "chunks.log"), "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {len(frame)}\n")
        return super().process(frame, **keys)


class FailingOperator(OperatorABC):
    """An operator whose model cannot be found once it runs (a user error raised inside a Ray worker)."""

    def run(self, storage: FileStorage) -> None:
        self.execute(storage)

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        raise ModelNotAvailableError("model 'nowhere/model' is not available offline")


class StoppingOperator(OperatorABC):
    """An operator whose server stopped answering (the run stops: ``RunStoppedError``, raised inside a Ray worker)."""

    def run(self, storage: FileStorage) -> None:
        self.execute(storage)

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        from dataflow_mm.common.errors import RunStoppedError

        raise RunStoppedError("the server stopped answering: 10 requests in a row failed (connection refused)")


class OneStepPipeline(PipelineABC):
    def __init__(self, operator: OperatorABC, table: Path, cache: Path, chunk_size: int = 1) -> None:
        self.operator = operator
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="one", chunk_size=chunk_size)

    def forward(self) -> None:
        self.operator.run(storage=self.storage.step())


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def region_caption_runs(
    ray_cluster: Any, tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The region-caption pipeline run once in-process and once on Ray, on the same table and cache folder.

    Six rows (one without boxes, one whose image is missing) and one malformed line; chunks of 3 rows.
    Both runs write to one cache folder (different file prefixes), so content-named images have equal paths.
    """
    root = tmp_path_factory.mktemp("ray_region_caption")
    table = write_region_caption_table(root / "imgs", n_rows=5, size=(96, 72), n_boxes=2, without_boxes=1)
    with table.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": 5, "image": str(root / "imgs" / "missing.jpg"), "bbox": [[1, 1, 5, 5]]}) + "\n")
        handle.write('{"id": 6, "image": "broken line\n')
    cache = root / "cache"
    script = load_script()
    runs: dict[str, Any] = {"cache": cache, "table": table, "script": script, "load_log": root / "loads.log"}
    for name in ("local", "ray"):
        serving = LoadCountingServing(
            str(tiny_qwen_dir), load_log=str(runs["load_log"]), device="cpu", max_tokens=5, temperature=0.0
        )
        pipeline = script.ImageRegionCaptionPipeline(
            serving,
            first_entry_file=str(table),
            cache_path=str(cache),
            file_name_prefix=name,
            chunk_size=3,
            output_image_with_bbox_path=str(cache / f"{name}_with_bbox.jsonl"),
        )
        runner = RayRunner(actors_per_model_operator=1) if name == "ray" else "local"
        runs[name] = {"summary": pipeline.run(runner=runner), "runner": runner, "pipeline": pipeline}
        serving.cleanup()
    return runs


# ---------------------------------------------------------------- the region-caption pipeline, both runners


def test_ray_rows_equal_the_in_process_rows(region_caption_runs: dict[str, Any]) -> None:
    cache = region_caption_runs["cache"]
    for step in (1, 2, 3):
        local = read_jsonl(cache / f"local_step{step}.jsonl")
        on_ray = read_jsonl(cache / f"ray_step{step}.jsonl")
        assert as_set(on_ray) == as_set(local)
        assert [r["id"] for r in on_ray] == [r["id"] for r in local] == [0, 1, 2, 3, 4, 5]  # input order kept
    rows = {r["id"]: r for r in read_jsonl(cache / "ray_step2.jsonl")}
    assert rows[4]["type"] == "without_bbox" and rows[0]["type"] == "with_bbox"
    assert rows[5]["error"].startswith("ImageNotFoundError") and rows[5]["answer"] is None
    for index in range(5):
        assert rows[index]["error"] is None and isinstance(rows[index]["answer"], str)
        assert Path(rows[index]["image_with_bbox"]).is_file()
    assert read_jsonl(cache / "ray_with_bbox.jsonl") == read_jsonl(cache / "ray_step1.jsonl")


def test_malformed_line_is_a_reject_on_ray_as_in_process(region_caption_runs: dict[str, Any]) -> None:
    cache = region_caption_runs["cache"]
    rejects = read_jsonl(cache / "ray_step1.jsonl.rejects.jsonl")
    assert rejects == read_jsonl(cache / "local_step1.jsonl.rejects.jsonl")
    assert [(r["line"], r["cause"]) for r in rejects] == [(7, "MalformedJSONLine")]


def test_summary_counts_are_the_same_and_add_up(region_caption_runs: dict[str, Any]) -> None:
    local, on_ray = region_caption_runs["local"]["summary"], region_caption_runs["ray"]["summary"]
    assert (on_ray.rows_in, on_ray.rows_out, on_ray.rows_rejected, on_ray.rows_with_error) == (7, 6, 1, 1)
    assert on_ray.rows_in == on_ray.rows_out + on_ray.rows_rejected
    for left, right in zip(local.steps, on_ray.steps, strict=True):
        assert {**left.to_dict(), "seconds": 0, "output_path": ""} == {
            **right.to_dict(),
            "seconds": 0,
            "output_path": "",
        }
    # the actors' serving stats come back to the driver's summary
    local_stats, ray_stats = (
        vars(s["summary"].servings[0].stats) for s in (region_caption_runs["local"], region_caption_runs["ray"])
    )
    assert ray_stats["requests"] == local_stats["requests"] == 5
    assert ray_stats["calls"] == local_stats["calls"] == 2
    assert ray_stats["completion_tokens"] == local_stats["completion_tokens"] > 0
    saved = json.loads((region_caption_runs["cache"] / "ray_summary.json").read_text())
    assert saved["rows_in"] == 7 and saved["rows_rejected"] == 1


def test_the_model_loads_once_per_actor(region_caption_runs: dict[str, Any]) -> None:
    pids = region_caption_runs["load_log"].read_text().split()
    runner: RayRunner = region_caption_runs["ray"]["runner"]
    assert pids.count(str(os.getpid())) == 1  # the in-process run, in this process
    actor_loads = [p for p in pids if p != str(os.getpid())]
    assert len(actor_loads) == 1  # 2 chunks answered by one actor, one load
    assert len(runner.workers_by_step[2]) == 1


def test_rerun_skips_completed_steps_on_either_runner(region_caption_runs: dict[str, Any], tiny_qwen_dir: Path) -> None:
    cache, script = region_caption_runs["cache"], region_caption_runs["script"]
    before = region_caption_runs["load_log"].read_text()
    for runner in (RayRunner(), "local"):
        serving = LocalModelVLMServing_hf(str(tiny_qwen_dir), device="cpu", max_tokens=5, temperature=0.0)
        pipeline = script.ImageRegionCaptionPipeline(
            serving,
            first_entry_file=str(region_caption_runs["table"]),
            cache_path=str(cache),
            file_name_prefix="ray",
            chunk_size=3,
            output_image_with_bbox_path=str(cache / "ray_with_bbox.jsonl"),
        )
        summary = pipeline.run(runner=runner)
        assert all(s.skipped for s in summary.steps) and len(summary.steps) == 3
        assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (7, 6, 1)
        assert serving.model is None
    assert region_caption_runs["load_log"].read_text() == before


# ---------------------------------------------------------------- actors, tasks, errors


def test_two_actors_prepare_once_each_and_finish_a_step_stopped_in_process(ray_cluster: Any, tmp_path: Path) -> None:
    images = read_jsonl(write_region_caption_table(tmp_path / "imgs", n_rows=6, size=(64, 48), n_boxes=1))
    rows = [{"id": r["id"], "image": r["image"], "prompt": "Describe."} for r in images]
    table = write_jsonl(tmp_path / "table.jsonl", rows)
    logs = tmp_path / "logs"
    logs.mkdir()
    operator = PrepareCountingVQA(FakeVLMServing(), str(logs))
    operator.fail_after_chunks = 2
    with pytest.raises(KeyboardInterrupt):
        OneStepPipeline(operator, table, tmp_path / "cache").run()  # in-process: 2 chunks done, then stopped
    operator.fail_after_chunks = None
    runner = RayRunner(actors_per_model_operator=2, batch_size=1)
    summary = OneStepPipeline(operator, table, tmp_path / "cache").run(runner=runner)
    assert (summary.rows_in, summary.rows_out, summary.rows_with_error) == (6, 6, 0)
    driver = str(os.getpid())  # prepares here: the in-process run, and joining the parts after Ray
    prepares = [pid for pid in (logs / "prepare.log").read_text().split() if pid != driver]
    chunks = [line.split() for line in (logs / "chunks.log").read_text().splitlines()]
    assert [pid for pid, _ in chunks[:2]] == [driver] * 2
    on_ray = chunks[2:]
    assert len(prepares) == len(set(prepares)) == 2  # one prepare per actor
    assert {pid for pid, _ in on_ray} == set(prepares)  # both actors answered chunks
    assert [int(n) for _, n in on_ray] == [1] * 4  # only the 4 chunks not done before
    assert summary.servings[0].stats.requests == 2 + 4  # one serving object: 2 in-process, 4 from the actors
    assert [r["id"] for r in read_jsonl(tmp_path / "cache" / "one_step1.jsonl")] == list(range(6))


def test_a_user_error_inside_a_worker_reaches_the_driver_as_itself(ray_cluster: Any, tmp_path: Path) -> None:
    table = write_jsonl(tmp_path / "table.jsonl", [{"id": 1}, {"id": 2}])
    pipeline = OneStepPipeline(FailingOperator(), table, tmp_path / "cache")
    with pytest.raises(ModelNotAvailableError, match="not available offline"):
        pipeline.run(runner=RayRunner())
    assert not (tmp_path / "cache" / "one_step1.jsonl").exists()


def test_a_run_stopped_inside_a_worker_stops_the_driver_as_itself(ray_cluster: Any, tmp_path: Path) -> None:
    """The same exception, message and all (not Ray's task error around it), so the script exits 3 with one line."""
    from dataflow_mm.common.errors import RunStoppedError

    table = write_jsonl(tmp_path / "table.jsonl", [{"id": 1}, {"id": 2}])
    with pytest.raises(RunStoppedError) as stopped:
        OneStepPipeline(StoppingOperator(), table, tmp_path / "cache").run(runner=RayRunner())
    assert type(stopped.value) is RunStoppedError
    assert str(stopped.value) == "the server stopped answering: 10 requests in a row failed (connection refused)"
    assert not (tmp_path / "cache" / "one_step1.jsonl").exists()


def test_an_operator_that_cannot_be_pickled_is_named(ray_cluster: Any, tmp_path: Path) -> None:
    import threading

    from dataflow_mm.common.errors import UserError

    operator = PromptedVQAGenerator(FakeVLMServing())
    operator.serving.lock = threading.Lock()  # type: ignore[attr-defined]
    table = write_jsonl(tmp_path / "table.jsonl", [{"id": 1, "prompt": "hi", "image": "x.jpg"}])
    with pytest.raises(UserError, match="PromptedVQAGenerator cannot be sent to Ray workers"):
        OneStepPipeline(operator, table, tmp_path / "cache").run(runner=RayRunner())


# ---------------------------------------------------------------- without starting Ray


def test_operators_holding_a_model_are_told_apart() -> None:
    from dataflow_mm import ImageBboxGenerator

    assert holds_model(PromptedVQAGenerator(FakeVLMServing()))
    assert not holds_model(ImageBboxGenerator())
    declared = ImageBboxGenerator()
    declared.holds_model = True  # type: ignore[attr-defined]
    assert holds_model(declared)


def test_runner_choice_is_one_flag() -> None:
    parser = argparse.ArgumentParser()
    add_runner_args(parser)
    assert runner_from_args(parser.parse_args([])).name == "local"
    runner = runner_from_args(
        parser.parse_args(["--runner", "ray", "--ray_address", "auto", "--ray_num_gpus_per_actor", "1"])
    )
    assert isinstance(runner, RayRunner)
    settings = runner.actor_settings
    assert (runner.address, settings.num_gpus_per_actor, settings.actors_per_model_operator) == ("auto", 1, 1)
    assert isinstance(get_runner("ray"), RayRunner)
    with pytest.raises(ValueError, match="actors_per_model_operator"):
        RayRunner(actors_per_model_operator=0)


def test_the_api_backend_runs_on_ray_against_a_real_server(ray_cluster: Any, tmp_path: Path) -> None:
    """The OpenAI-compatible backend pickles to Ray actors; rows come back answered, in order, as in-process,
    and the serving's extra counters (HTTP requests, retry causes) come back from the actors too."""
    from dataflow_mm.serving.api_serving import APIVLMServing_openai
    from tests.support.openai_test_server import OpenAITestServer

    table = write_region_caption_table(tmp_path / "imgs", n_rows=4, size=(64, 48), n_boxes=1)
    answers, extras = {}, {}
    for name in ("local", "ray"):
        with OpenAITestServer(fail_first_n=(503, 1, "0")) as server:  # one retry per run
            serving = APIVLMServing_openai(server.base_url, "test-model", api_key_env=None, max_workers=2)
            pipeline = load_script().ImageRegionCaptionPipeline(
                serving, first_entry_file=str(table), cache_path=str(tmp_path / "cache"), file_name_prefix=name,
                chunk_size=2, output_image_with_bbox_path=None,
            )  # fmt: skip
            summary = pipeline.run(runner=RayRunner(actors_per_model_operator=1) if name == "ray" else "local")
            assert summary.rows_out == 4 and summary.rows_with_error == 0
            answers[name] = [r["answer"] for r in read_jsonl(tmp_path / "cache" / f"{name}_step2.jsonl")]
            extras[name] = summary.servings[0].stats.extra
            serving.cleanup()
    assert answers["ray"] == answers["local"] and all(answers["ray"])
    assert extras["ray"] == extras["local"]
    assert extras["ray"]["http_requests"] == 5 and sum(extras["ray"]["retry_causes"].values()) == 1


def test_the_imgdiff_pipeline_on_ray_equals_in_process(
    ray_cluster: Any, tmp_path: Path, tiny_blip_dir: Path, tiny_clip_dir: Path
) -> None:
    """The five Img-Diff steps (proposer, VLM, BLIP, CLIP, VLM) on Ray give the in-process rows, with the steps
    one after another (each actor reserves a CPU: four model actors do not fit 2 CPUs at once) and streaming
    (quarter-CPU actors fit, with a CPU to spare for the proposer's tasks)."""
    script = load_pipeline_script("imgdiff_pipeline")
    rows = {}
    runners = {
        "local": "local",
        "ray": RayRunner(actors_per_model_operator=1),
        "ray_streaming": RayRunner(actors_per_model_operator=1, num_cpus_per_actor=0.25),
    }
    for name, runner in runners.items():
        pipeline = script.ImgDiffPipeline(
            FakeVLMServing(), first_entry_file=str(REPO / "data" / "imgdiff" / "imgdiff_demo.jsonl"),
            cache_path=str(tmp_path / "cache"), file_name_prefix=name, blip_model=str(tiny_blip_dir),
            similarity_model=str(tiny_clip_dir), similarity_min_score=-1.0,
        )  # fmt: skip
        if name != "local":
            steps = [call.operator for call in pipeline.compile()]
            assert runner.pools_fit(steps) is (name == "ray_streaming")
        summary = pipeline.run(runner=runner)
        assert summary.rows_out == 4 and summary.rows_with_error == 0
        rows[name] = [
            {k: v for k, v in row.items() if k != "provenance"}
            for row in read_jsonl(tmp_path / "cache" / f"{name}_step5.jsonl")
        ]
        pipeline.cleanup()
    assert rows["ray"] == rows["local"] == rows["ray_streaming"]
    assert all(len(r["bboxes"]) == len(r["bbox_difference_captions"]) for r in rows["ray"])


def test_a_hugging_face_image_shard_runs_on_ray_as_in_process(ray_cluster: Any, tmp_path: Path) -> None:
    """Image bytes reach Ray workers in the chunks; each worker stores them under the same media cache."""
    from PIL import Image

    from tests.support.user_inputs import image_bytes, write_hf_image_shard

    images = [image_bytes(Image.new("RGB", (64, 48), (40 * i, 90, 200))) for i in range(3)]
    shard = write_hf_image_shard(
        tmp_path / "train.parquet",
        {"image": [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(images)], "bbox": [[[4, 4, 20, 20]]] * 3},
        ["image"],
    )
    rows = {}
    for name in ("local", "ray"):
        pipeline = load_script().ImageRegionCaptionPipeline(
            FakeVLMServing(), first_entry_file=str(shard), cache_path=str(tmp_path / "cache"), file_name_prefix=name,
            chunk_size=2, output_image_with_bbox_path=None,
        )  # fmt: skip
        summary = pipeline.run(runner=RayRunner(actors_per_model_operator=1) if name == "ray" else "local")
        assert summary.rows_out == 3 and summary.rows_with_error == 0
        rows[name] = [r["image"] for r in read_jsonl(tmp_path / "cache" / f"{name}_step2.jsonl")]
    assert rows["ray"] == rows["local"]
    assert [Path(cell["path"]).read_bytes() for cell in rows["ray"]] == images


def test_the_model_proposer_on_ray_equals_in_process(
    ray_cluster: Any, tmp_path: Path, tiny_blip_dir: Path, tiny_clip_dir: Path, tiny_owlv2_dir: Path
) -> None:
    """Captioned pairs: the difference-area generator (CLIP, OWLv2, BLIP) and the four Img-Diff steps on Ray."""
    from tests.support.imgdiff_pairs import write_captioned_pairs

    table = write_captioned_pairs(tmp_path / "pairs", 4)
    script = load_pipeline_script("imgdiff_pipeline")
    rows = {}
    for name in ("local", "ray"):
        pipeline = script.ImgDiffPipeline(
            FakeVLMServing(), first_entry_file=str(table), cache_path=str(tmp_path / "cache"), file_name_prefix=name,
            chunk_size=2, proposer="model", blip_model=str(tiny_blip_dir), similarity_model=str(tiny_clip_dir),
            detector_model=str(tiny_owlv2_dir), image_similarity_model=str(tiny_clip_dir), similarity_min_score=-1.0,
        )  # fmt: skip
        summary = pipeline.run(runner=RayRunner(actors_per_model_operator=1) if name == "ray" else "local")
        assert summary.rows_out == 4 and summary.rows_with_error == 0
        assert summary.steps[0].operator == "ImgDiffDifferenceAreaGenerator"
        rows[name] = [
            {k: v for k, v in row.items() if k != "provenance"}
            for row in read_jsonl(tmp_path / "cache" / f"{name}_step5.jsonl")
        ]
        pipeline.cleanup()
    assert rows["ray"] == rows["local"]
    assert all(r["bbox_source"] == "generated" and r["area_decisions"] for r in rows["ray"])
