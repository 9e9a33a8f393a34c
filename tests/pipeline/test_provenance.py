"""Provenance: each row of a model step references the step's manifest (model, config hash, backend,
sampling, prompt and operator parameters) by a small ``{"step<k>": fingerprint}`` column, stable
across reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dataflow_mm import (
    ExistingBBoxDataGenConfig,
    FileStorage,
    ImageBboxGenerator,
    PipelineABC,
    PromptedVQAGenerator,
    RegionCaptionParser,
)
from dataflow_mm.common.errors import StorageError
from dataflow_mm.engine.chunk_processing import PROVENANCE_COLUMN, step_manifests
from dataflow_mm.models.resolver import config_sha256
from dataflow_mm.serving.base import SamplingParams
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.storage.manifest import StepManifest
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_jsonl, write_region_caption_table

PROMPT = "Describe region {n} carefully."


class RegionCaptions(PipelineABC):
    def __init__(self, table: Path, cache: Path, serving: FakeVLMServing, system_prompt: str = "Be brief.") -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=2)
        self.serving = serving
        self.boxes = ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=4), prompt_template=PROMPT)
        self.vqa = PromptedVQAGenerator(serving, system_prompt=system_prompt)
        self.parser = RegionCaptionParser()

    def forward(self) -> None:
        self.boxes.run(self.storage.step(), input_image_key="image", input_bbox_key="bbox")
        self.vqa.run(self.storage.step(), input_image_key="image_with_bbox", input_prompt_key="prompt")
        self.parser.run(self.storage.step())


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_reference_the_manifest_of_the_model_step(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=5, without_boxes=1)
    lines = table.read_text().splitlines()
    lines.append(json.dumps({"image": str(tmp_path / "imgs" / "missing.jpg"), "bbox": [[1, 1, 5, 5]]}))
    table.write_text("\n".join(lines) + "\n")
    serving = FakeVLMServing(sampling=SamplingParams(temperature=0.2, top_p=0.8, max_tokens=64, seed=7))
    pipeline = RegionCaptions(table, tmp_path / "cache", serving)
    pipeline.run()

    step1, step3 = rows_of(tmp_path / "cache" / "rc_step1.jsonl"), rows_of(tmp_path / "cache" / "rc_step3.jsonl")
    assert all(PROVENANCE_COLUMN not in row for row in step1)  # no model: nothing to trace
    manifest = StepManifest.load(tmp_path / "cache" / "rc_step2.jsonl")
    assert manifest is not None
    for row in step3[:5]:
        assert row["error"] is None and row[PROVENANCE_COLUMN] == {"step2": manifest.fingerprint}
    assert step3[5]["error"].startswith("ImageNotFoundError") and step3[5].get(PROVENANCE_COLUMN) is None

    found = step_manifests(step3[0][PROVENANCE_COLUMN], pipeline.storage)
    recorded = found["step2"]
    assert recorded.provenance == {
        "backend": "fake",
        "model": "fake-vlm",
        "sampling": {"temperature": 0.2, "top_p": 0.8, "max_tokens": 64, "seed": 7},
        "smoke_test_model": False,
    }
    assert recorded.params == {"system_prompt": "Be brief."}
    assert StepManifest.load(tmp_path / "cache" / "rc_step1.jsonl").params["prompt_template"] == PROMPT
    assert step3[0]["prompt"] == PROMPT.format(n=step3[0]["valid_bboxes_num"])  # the prompt text itself


def test_provenance_is_stable_across_reruns_and_follows_changes(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3)
    cache = tmp_path / "cache"
    RegionCaptions(table, cache, FakeVLMServing()).run()
    first = [r[PROVENANCE_COLUMN] for r in rows_of(cache / "rc_step3.jsonl")]

    again = FakeVLMServing()
    resumed = RegionCaptions(table, cache, again).run()
    assert again.calls == [] and all(step.skipped for step in resumed.steps)
    assert [r[PROVENANCE_COLUMN] for r in rows_of(cache / "rc_step3.jsonl")] == first

    fresh = tmp_path / "fresh_cache"  # a run from scratch elsewhere: the same reference
    RegionCaptions(table, fresh, FakeVLMServing()).run()
    assert [r[PROVENANCE_COLUMN] for r in rows_of(fresh / "rc_step3.jsonl")] == first

    changed = FakeVLMServing()
    RegionCaptions(table, cache, changed, system_prompt="Be very detailed.").run()
    assert changed.calls  # the model step ran again
    now = [r[PROVENANCE_COLUMN] for r in rows_of(cache / "rc_step3.jsonl")]
    assert now != first and len({json.dumps(p) for p in now}) == 1
    storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc")
    assert step_manifests(now[0], storage)["step2"].params == {"system_prompt": "Be very detailed."}
    with pytest.raises(StorageError, match="does not match"):
        step_manifests(first[0], storage)  # the old reference no longer names this step file's run


class TwoQuestions(PipelineABC):
    def __init__(self, table: Path, cache: Path, first: FakeVLMServing, second: FakeVLMServing) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="qa")
        self.ask = PromptedVQAGenerator(first)
        self.ask_again = PromptedVQAGenerator(second)

    def forward(self) -> None:
        self.ask.run(self.storage.step(), input_image_key=None, output_answer_key="first")
        self.ask_again.run(self.storage.step(), input_image_key=None, output_answer_key="second")


def test_references_of_several_model_steps_are_merged(tmp_path: Path) -> None:
    table = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "hello"}, {"prompt": "world"}])
    greedy = FakeVLMServing(sampling=SamplingParams(temperature=0.0))
    TwoQuestions(table, tmp_path / "cache", FakeVLMServing(), greedy).run()
    rows = rows_of(tmp_path / "cache" / "qa_step2.jsonl")
    fingerprints = {k: StepManifest.load(tmp_path / "cache" / f"qa_{k}.jsonl").fingerprint for k in ("step1", "step2")}
    assert fingerprints["step1"] != fingerprints["step2"]
    assert [r[PROVENANCE_COLUMN] for r in rows] == [fingerprints, fingerprints]


def test_hf_serving_records_the_hash_of_its_model_config(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    serving = LocalModelVLMServing_hf(str(tiny_qwen_dir), device="cpu", max_tokens=4)
    info = serving.describe()
    assert info["backend"] == "hf" and info["model"] == str(tiny_qwen_dir)
    assert info["config_sha256"] == config_sha256(tiny_qwen_dir) and len(info["config_sha256"]) == 64
    assert LocalModelVLMServing_hf(str(tiny_qwen_dir), device="cpu", max_tokens=4).describe() == info  # stable
    assert serving.model is None  # describing never loads the model

    copy = tmp_path / "model"
    shutil.copytree(tiny_qwen_dir, copy)
    assert config_sha256(copy) == info["config_sha256"]  # content, not location
    generation = json.loads((copy / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps({**generation, "top_k": 3}))
    assert config_sha256(copy) != info["config_sha256"]
    assert LocalModelVLMServing_hf("no-such-org/no-such-model").describe()["config_sha256"] is None
