"""A second FileStorage whose first entry is a file a step of the first one wrote (the seed's two-storage
pattern: same cache path and prefix, one storage per operator) continues the step numbering after it.

Which step wrote the file is read from the step manifests in the cache folder (``extra_outputs``), so
it works when the two storages run in different processes; while a pipeline compiles, before its
steps have run, the extra outputs it plans stand in for those manifests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dataflow_mm import (
    ExistingBBoxDataGenConfig,
    FileStorage,
    ImageBboxGenerator,
    PipelineABC,
    PromptedVQAGenerator,
)
from dataflow_mm.storage.file_storage import producing_step, step_number
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_region_caption_table

REPO = Path(__file__).resolve().parents[2]

# One process runs the box step (storage 1), another the caption step (storage 2), as two scripts would.
TWO_PROCESS_SCRIPT = """
import sys
from dataflow_mm import ExistingBBoxDataGenConfig, FileStorage, ImageBboxGenerator, PromptedVQAGenerator
from tests.support.fake_serving import FakeVLMServing

table, cache, extra, phase = sys.argv[1:5]
if phase == "boxes":
    storage = FileStorage(table, cache_path=cache, file_name_prefix="rc")
    config = ExistingBBoxDataGenConfig(max_boxes=10, input_jsonl_path=table, output_jsonl_path=extra)
    ImageBboxGenerator(config=config).run(storage=storage.step(), input_image_key="image", input_bbox_key="bbox")
else:
    storage = FileStorage(extra, cache_path=cache, file_name_prefix="rc")
    PromptedVQAGenerator(serving=FakeVLMServing()).run(
        storage=storage.step(), input_image_key="image_with_bbox", input_prompt_key="prompt"
    )
"""


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_phase(script: Path, table: Path, cache: Path, extra: Path, phase: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(script), str(table), str(cache), str(extra), phase],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_second_storage_continues_the_numbering_in_another_process(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    cache, extra = tmp_path / "cache", tmp_path / "cache" / "image_with_bbox_result.jsonl"
    script = tmp_path / "two_storages.py"
    script.write_text(TWO_PROCESS_SCRIPT)

    run_phase(script, table, cache, extra, "boxes")
    boxes = (cache / "rc_step1.jsonl").read_bytes()
    run_phase(script, table, cache, extra, "captions")  # a fresh process: nothing in memory from the first

    assert (cache / "rc_step1.jsonl").read_bytes() == boxes  # the box step's file is not overwritten
    answers = rows(cache / "rc_step2.jsonl")
    assert len(answers) == 2 and all(r["answer"] and r["image_with_bbox"] for r in answers)
    assert json.loads((cache / "rc_step2.jsonl.manifest.json").read_text())["input_path"] == str(extra)


class TwoStorages(PipelineABC):
    """The seed's pattern as a compiled pipeline: on a first run no manifest exists when it compiles."""

    def __init__(self, table: Path, cache: Path) -> None:
        extra = str(cache / "image_with_bbox_result.jsonl")
        self.bbox_storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc")
        self.caption_storage = FileStorage(extra, cache_path=str(cache), file_name_prefix="rc")
        config = ExistingBBoxDataGenConfig(max_boxes=10, input_jsonl_path=str(table), output_jsonl_path=extra)
        self.bbox_generator = ImageBboxGenerator(config=config)
        self.caption_generator = PromptedVQAGenerator(serving=FakeVLMServing())

    def forward(self) -> None:
        self.bbox_generator.run(storage=self.bbox_storage.step(), input_image_key="image", input_bbox_key="bbox")
        self.caption_generator.run(
            storage=self.caption_storage.step(), input_image_key="image_with_bbox", input_prompt_key="prompt"
        )


def test_a_compiled_pipeline_plans_the_numbering_before_any_step_has_run(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    cache = tmp_path / "cache"
    calls = TwoStorages(table, cache).compile()
    assert [call.storage.output_path.name for call in calls] == ["rc_step1.jsonl", "rc_step2.jsonl"]

    summary = TwoStorages(table, cache).run()
    assert [step.skipped for step in summary.steps] == [False, False]
    assert "answer" not in rows(cache / "rc_step1.jsonl")[0] and rows(cache / "rc_step2.jsonl")[0]["answer"]
    again = TwoStorages(table, cache).run()  # resumed: the manifests say the same as the plan
    assert [step.skipped for step in again.steps] == [True, True]


def test_the_producing_step_is_read_from_the_manifests(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1)
    cache = tmp_path / "cache"
    TwoStorages(table, cache).run()
    extra = cache / "image_with_bbox_result.jsonl"
    assert producing_step(extra, str(cache), "rc", "jsonl") == cache / "rc_step1.jsonl"
    assert producing_step(table, str(cache), "rc", "jsonl") is None  # the user's file: no step wrote it
    assert producing_step(extra, str(cache), "other", "jsonl") is None  # another prefix's steps
    assert producing_step(extra, str(tmp_path / "elsewhere"), "rc", "jsonl") is None
    assert step_number(cache / "rc_step12.jsonl", str(cache), "rc", "jsonl") == 12
    assert step_number(tmp_path / "rc_step12.jsonl", str(cache), "rc", "jsonl") is None
