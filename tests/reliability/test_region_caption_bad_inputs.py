"""Dirty inputs through the region-caption pipeline (tiny Qwen2.5-VL): every row keeps its place with a
specific error or an answer, unreadable lines are rejected and counted, and run-level problems stop
before any model loads with one clear message."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from dataflow_mm import FileStorage, ImageBboxGenerator, LocalModelVLMServing_hf, PipelineABC, PromptedVQAGenerator
from dataflow_mm.common.errors import UserError, error_class_of
from dataflow_mm.operators.region_caption.image_bbox_generator import ExistingBBoxDataGenConfig
from dataflow_mm.pipeline.summary import RunSummary
from tests.support.bad_inputs import Case, build_region_caption_corpus
from tests.support.sample_data import write_region_caption_table


class RegionCaptions(PipelineABC):
    def __init__(self, table: Path, cache: Path, serving: LocalModelVLMServing_hf, cache_type: str = "jsonl") -> None:
        self.storage = FileStorage(
            str(table), cache_path=str(cache), file_name_prefix="rc", cache_type=cache_type, chunk_size=16
        )
        self.boxes = ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=10))
        self.vqa = PromptedVQAGenerator(serving)

    def forward(self) -> None:
        self.boxes.run(self.storage.step(), input_image_key="image", input_bbox_key="bbox")
        self.vqa.run(self.storage.step(), input_image_key="image_with_bbox", input_prompt_key="prompt")


@pytest.fixture(scope="module")
def corpus_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_qwen_dir: Path
) -> tuple[RunSummary, list, list, dict, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    table, cases, rejects = build_region_caption_corpus(folder)
    serving = LocalModelVLMServing_hf(str(tiny_qwen_dir), max_tokens=4, temperature=0.0, batch_size=16)
    summary = RegionCaptions(table, folder / "cache", serving).run()
    serving.cleanup()
    rows = [json.loads(line) for line in (folder / "cache" / "rc_step2.jsonl").read_text().splitlines()]
    return summary, cases, rows, rejects, folder


def test_counts_identity_and_rejects_by_cause(corpus_run: tuple) -> None:
    summary, cases, rows, rejects, folder = corpus_run
    assert summary.rows_in == len(cases) + sum(rejects.values())
    assert summary.rows_out == len(rows) == len(cases)
    assert summary.rows_in == summary.rows_out + summary.rows_rejected
    assert summary.steps[0].rejected == rejects
    saved = [json.loads(x) for x in (folder / "cache" / "rc_step1.jsonl.rejects.jsonl").read_text().splitlines()]
    assert Counter(r["cause"] for r in saved) == rejects
    assert all(r["line"] > 0 and r["message"] for r in saved)


def test_rows_keep_their_order(corpus_run: tuple) -> None:
    _, cases, rows, _, _ = corpus_run
    assert [r["case_id"] for r in rows] == [c.case_id for c in cases]


def case_ids() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return [c.case_id for c in build_region_caption_corpus(Path(tmp))[1]]


@pytest.mark.parametrize("case_id", case_ids())
def test_each_case_ends_with_its_expected_outcome(corpus_run: tuple, case_id: str) -> None:
    _, cases, rows, _, folder = corpus_run
    case: Case = next(c for c in cases if c.case_id == case_id)
    row = next(r for r in rows if r["case_id"] == case_id)
    if case.error:
        assert error_class_of(row["error"]) == case.error, row["error"]
        assert row["answer"] is None
        assert len(row["error"]) > len(case.error) + 10  # names the cause, not just the class
        return
    assert row["error"] is None, row["error"]
    assert isinstance(row["answer"], str) and row["answer"]
    assert row["type"] == case.box_type
    if case.valid_boxes is not None:
        assert row["valid_bboxes_num"] == case.valid_boxes
    if case.normalized_first is not None:
        assert row["normalized_bbox"][0] == case.normalized_first
    assert Path(row["image_with_bbox"]).resolve().parent == (folder / "cache").resolve()


def test_no_file_is_written_outside_the_cache(corpus_run: tuple) -> None:
    _, _, _, _, folder = corpus_run
    outside = {p for p in folder.rglob("*") if p.is_file() and "cache" not in p.relative_to(folder).parts}
    assert all(p.parent.name in ("images", "ünïcödé") or p.name == "dirty.jsonl" for p in outside), outside


class NeverLoaded(LocalModelVLMServing_hf):
    def load(self) -> None:  # type: ignore[override]
        raise AssertionError("a model was loaded for a run that should have stopped first")


def unwritable_cache(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through permission bits: use a place nobody can create folders in
        return Path("/proc/dataflow_mm_cache")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    return tmp_path / "ro" / "cache"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing input", "does not exist"),
        ("input is a directory", "is a directory"),
        ("empty file", "is empty"),
        ("missing key column", "input key 'image' is not a column"),
        ("csv duplicate columns", "duplicate column names"),
        ("unwritable cache", "not writable"),
    ],
)
def test_run_level_problems_stop_before_any_model_loads(
    tmp_path: Path, tiny_qwen_dir: Path, case: str, message: str
) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2, size=(64, 48), n_boxes=1)
    cache = tmp_path / "cache"
    if case == "missing input":
        table = tmp_path / "nope.jsonl"
    elif case == "input is a directory":
        table = tmp_path / "imgs"
        table = table.rename(tmp_path / "table_dir.jsonl")
    elif case == "empty file":
        table.write_text("\n\n")
    elif case == "missing key column":
        table.write_text(json.dumps({"picture": "a.jpg"}) + "\n")
    elif case == "csv duplicate columns":
        table = tmp_path / "table.csv"
        table.write_text("image,image\na.jpg,b.jpg\n")
    elif case == "unwritable cache":
        cache = unwritable_cache(tmp_path)
    with pytest.raises(UserError, match=message):
        RegionCaptions(table, cache, NeverLoaded(str(tiny_qwen_dir))).run()
