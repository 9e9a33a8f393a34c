"""PipelineABC: compile-time key checks, resume by manifests, rerun on change, the summary identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflow_mm import (
    ExistingBBoxDataGenConfig,
    FileStorage,
    ImageBboxGenerator,
    PipelineABC,
    PromptedVQAGenerator,
)
from dataflow_mm.common.errors import PipelineCompileError
from dataflow_mm.serving.base import SamplingParams
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_jsonl, write_region_caption_table


class RegionCaptions(PipelineABC):
    def __init__(
        self,
        table: Path,
        cache: Path,
        serving: FakeVLMServing,
        max_boxes: int = 10,
        image_key: str = "image_with_bbox",
    ) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=3)
        self.boxes = ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=max_boxes))
        self.serving = serving
        self.vqa = PromptedVQAGenerator(serving)
        self.image_key = image_key

    def forward(self) -> None:
        self.boxes.run(self.storage.step(), input_image_key="image", input_bbox_key="bbox")
        self.vqa.run(self.storage.step(), input_image_key=self.image_key, input_prompt_key="prompt")


class ExplodingServing(FakeVLMServing):
    """A serving that must never be called (compile must fail before any model work)."""

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        raise AssertionError("the model was called")


def test_compile_reports_every_missing_key_before_any_model_call(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    pipeline = RegionCaptions(table, tmp_path / "cache", ExplodingServing(), image_key="image_with_bbx")
    pipeline.boxes = ImageBboxGenerator()
    pipeline.forward = lambda: (  # type: ignore[method-assign]
        pipeline.boxes.run(pipeline.storage.step(), input_image_key="img"),
        pipeline.vqa.run(pipeline.storage.step(), input_image_key="image_with_bbx", input_prompt_key="promt"),
    )
    with pytest.raises(PipelineCompileError) as info:
        pipeline.run()
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "'img'" in message and "'image_with_bbx'" in message and "Did you mean 'image_with_bbox'" in message
    assert "Did you mean 'prompt'" in message
    assert not (tmp_path / "cache" / "rc_step1.jsonl").exists()


def test_full_run_then_resume_skips_every_step(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=7, without_boxes=1)
    serving = FakeVLMServing()
    summary = RegionCaptions(table, tmp_path / "cache", serving).run()
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (7, 7, 0)
    assert [len(call) for call in serving.calls] == [3, 3, 1]
    rows = [json.loads(line) for line in (tmp_path / "cache" / "rc_step2.jsonl").read_text().splitlines()]
    assert all(r["answer"] for r in rows)

    again = FakeVLMServing()
    resumed = RegionCaptions(table, tmp_path / "cache", again).run()
    assert again.calls == []
    assert all(step.skipped for step in resumed.steps)
    assert "already complete, skipped" in caplog.text


def test_changed_parameters_rerun_from_that_step(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3, n_boxes=4)
    RegionCaptions(table, tmp_path / "cache", FakeVLMServing()).run()

    serving = FakeVLMServing()
    changed = RegionCaptions(table, tmp_path / "cache", serving, max_boxes=2).run()
    assert [step.skipped for step in changed.steps] == [False, False]
    assert len(serving.calls) == 1

    sampling_changed = FakeVLMServing(sampling=SamplingParams(temperature=0.0))
    rerun = RegionCaptions(table, tmp_path / "cache", sampling_changed, max_boxes=2).run()
    assert [step.skipped for step in rerun.steps] == [True, False]


def test_changed_input_file_reruns_everything(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3)
    RegionCaptions(table, tmp_path / "cache", FakeVLMServing()).run()
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    write_jsonl(table, rows[:2])
    summary = RegionCaptions(table, tmp_path / "cache", FakeVLMServing()).run()
    assert [step.skipped for step in summary.steps] == [False, False]
    assert summary.rows_out == 2


def test_rejected_lines_and_row_errors_are_counted(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3)
    lines = table.read_text().splitlines()
    lines.insert(1, '{"image": broken json')
    lines.append(json.dumps({"image": str(tmp_path / "missing.jpg")}))
    table.write_text("\n".join(lines) + "\n")
    summary = RegionCaptions(table, tmp_path / "cache", FakeVLMServing()).run()
    assert summary.rows_in == 5
    assert summary.rows_out == 4 and summary.rows_rejected == 1
    assert summary.rows_in == summary.rows_out + summary.rows_rejected
    assert summary.steps[-1].row_errors == {"ImageNotFoundError": 1}
    rejects = (tmp_path / "cache" / "rc_step1.jsonl.rejects.jsonl").read_text().splitlines()
    assert json.loads(rejects[0])["cause"] == "MalformedJSONLine"
    saved = json.loads((tmp_path / "cache" / "rc_summary.json").read_text())
    assert saved["rows_in"] == 5 and saved["rows_rejected"] == 1


def test_the_seed_pipeline_class_runs_with_only_its_imports_changed(tmp_path: Path) -> None:
    """The seed's code shape: two storages and a config output path, plain forward(), no base class."""
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    cache = tmp_path / "cache"
    output_image_with_bbox_path = str(cache / "image_with_bbox_result.jsonl")

    class ImageRegionCaptionPipeline:
        def __init__(self) -> None:
            self.bbox_storage = FileStorage(
                first_entry_file_name=str(table),
                cache_path=str(cache),
                file_name_prefix="region_caption",
                cache_type="jsonl",
            )
            self.cfg = ExistingBBoxDataGenConfig(
                max_boxes=10, input_jsonl_path=str(table), output_jsonl_path=output_image_with_bbox_path
            )
            self.caption_storage = FileStorage(
                first_entry_file_name=output_image_with_bbox_path,
                cache_path=str(cache),
                file_name_prefix="region_caption",
                cache_type="jsonl",
            )
            self.serving = FakeVLMServing()
            self.bbox_generator = ImageBboxGenerator(config=self.cfg)
            self.caption_generator = PromptedVQAGenerator(serving=self.serving)

        def forward(self) -> None:
            self.bbox_generator.run(storage=self.bbox_storage.step(), input_image_key="image", input_bbox_key="bbox")
            self.caption_generator.run(
                storage=self.caption_storage.step(),
                input_image_key="image_with_bbox",
                input_prompt_key="prompt",
            )

    ImageRegionCaptionPipeline().forward()
    # The second storage continues after the first one's step: the box step's file is not overwritten.
    boxes = [json.loads(line) for line in (cache / "region_caption_step1.jsonl").read_text().splitlines()]
    assert len(boxes) == 2 and all(r["image_with_bbox"] and "answer" not in r for r in boxes)
    rows = [json.loads(line) for line in (cache / "region_caption_step2.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["answer"] and r["image_with_bbox"] for r in rows)


def test_the_tiny_fallback_is_for_the_shipped_default_model_or_smoke_tests_only() -> None:
    import argparse

    from dataflow_mm.pipeline.script import add_serving_args, tiny_fallback_allowed

    parser = argparse.ArgumentParser()
    add_serving_args(parser, default_model="Org/Default-VL")
    assert tiny_fallback_allowed(parser.parse_args([]))
    assert not tiny_fallback_allowed(parser.parse_args(["--model_path", "/models/Qwen2.5-VL-3B-Instuct"]))
    assert tiny_fallback_allowed(parser.parse_args(["--model_path", "/models/x", "--smoke_test"]))
    assert not tiny_fallback_allowed(parser.parse_args(["--no_tiny_fallback"]))
