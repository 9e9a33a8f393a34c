"""The whole bad-input corpus through both shipped pipelines (fake VLM, tiny BLIP and CLIP), twice each:
no run stops, every row ends as its case expects, rows in = rows out + lines rejected, and docs/reliability.md
reports exactly the figures this run computes (``python -m tests.support.bad_inputs`` prints them)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from dataflow_mm.common.errors import error_class_of
from dataflow_mm.operators.imgdiff.box_decisions import MAX_INPUT_BOXES
from tests.support.bad_input_runs import BLOCKED_LOGS_TABLE, CorpusFigures, run_corpus
from tests.support.bad_inputs import (
    MANY_BOXES,
    URL_PASSWORD,
    Case,
    build_chunk_corpus,
    build_data_juicer_corpus,
    build_imgdiff_corpus,
    build_region_caption_corpus,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def corpus(
    corpus_folder: Path, tiny_blip_dir: Path, tiny_clip_dir: Path
) -> tuple[CorpusFigures, dict[str, list[dict[str, Any]]]]:
    figures, outputs = run_corpus(corpus_folder, str(tiny_blip_dir), str(tiny_clip_dir))
    rows = {name: [json.loads(x) for x in path.read_text().splitlines()] for name, path in outputs.items()}
    return figures, rows


def cases_of(builder: Any) -> list[Case]:
    with tempfile.TemporaryDirectory() as tmp:
        return builder(Path(tmp))[1]


def check(case: Case, row: dict[str, Any]) -> None:
    if case.error:
        assert error_class_of(row["error"]) == case.error, row["error"]
        return
    assert row["error"] is None, row["error"]
    if case.valid_boxes is not None:
        assert row["valid_bboxes_num"] == case.valid_boxes


def row_of(rows: dict[str, list[dict[str, Any]]], table: str, case_id: str) -> dict[str, Any]:
    (name,) = [n for n in rows if n.endswith(":" + table)]
    return next(r for r in rows[name] if r.get("case_id") == case_id)


def test_no_run_stops_and_every_rerun_finds_its_steps_complete(corpus: tuple) -> None:
    figures, _ = corpus
    assert figures.runs_stopped == 0 and figures.stops == []
    assert figures.tables == 7 and figures.runs == 14


def test_rows_in_equal_rows_out_plus_lines_rejected(corpus: tuple) -> None:
    figures, rows = corpus
    assert figures.rows_tried == sum(map(len, rows.values())) + figures.lines_rejected
    assert figures.rows_with_error == sum(bool(r["error"]) for table in rows.values() for r in table)
    assert figures.lines_rejected == 6 + 5  # region: 3 + 3 too deep; imgdiff: 2 + 3 too deep


@pytest.mark.parametrize("case", cases_of(build_region_caption_corpus), ids=lambda c: c.case_id)
def test_region_caption_cases(corpus: tuple, case: Case) -> None:
    check(case, row_of(corpus[1], "dirty.jsonl", case.case_id))


@pytest.mark.parametrize("case", cases_of(build_imgdiff_corpus), ids=lambda c: c.case_id)
def test_imgdiff_cases(corpus: tuple, case: Case) -> None:
    row = row_of(corpus[1], "pairs.jsonl", case.case_id)
    check(case, row)
    if case.case_id.startswith("box:"):  # the box beyond float range is dropped with its reason
        dropped = [d for d in row["bbox_decisions"] if not d["kept"]]
        assert dropped[-1]["dropped_at"] == "parse" and "too large" in dropped[-1]["drop_reason"]


@pytest.mark.parametrize("case", cases_of(build_data_juicer_corpus), ids=lambda c: c.case_id)
def test_data_juicer_meta_shapes(corpus: tuple, case: Case) -> None:
    row = row_of(corpus[1], "dj_meta.jsonl", case.case_id)
    check(case, row)
    if case.error:  # the row keeps the meta it came with
        assert not isinstance(row["__dj__meta__"], dict)


@pytest.mark.parametrize("table", ["chunks.jsonl", "chunk_pairs.jsonl"])
@pytest.mark.parametrize("case", cases_of(build_chunk_corpus), ids=lambda c: c.case_id)
def test_chunks_without_the_image_key(corpus: tuple, table: str, case: Case) -> None:
    row = row_of(corpus[1], table, case.case_id)
    check(Case(case.case_id, error=case.error), row)


def test_a_key_first_present_after_200_rows_passes_the_key_check(corpus: tuple) -> None:
    row = row_of(corpus[1], "late_key.jsonl", "late:good")
    assert row["error"] is None and row["answer"]


def test_no_written_file_holds_the_password_of_an_image_url(corpus: tuple, corpus_folder: Path) -> None:
    """Issue #24: URLs with credentials are refused, and masked in every cell and message written."""
    _, rows = corpus
    for case_id in ("url:user and password", "url:token as user name"):
        row = row_of(rows, "dirty.jsonl", case_id)
        assert "user name or password" in row["error"] and "***@127.0.0.1" in row["image"]
    inputs = {"dirty.jsonl", "pairs.jsonl"}  # the user's own tables hold it
    written = [p for p in corpus_folder.rglob("*") if p.is_file() and p.name not in inputs]
    assert any("cache" in p.parent.name for p in written)
    assert not [p for p in written if URL_PASSWORD.encode() in p.read_bytes()]


def test_rows_of_many_boxes_are_read_up_to_the_cap(corpus: tuple) -> None:
    _, rows = corpus
    region = row_of(rows, "dirty.jsonl", f"box:{MANY_BOXES} outside, then one")
    assert len(region["bbox_dropped"]) <= 22 and region["bbox_dropped"][-1].endswith("more invalid boxes")
    pairs = row_of(rows, "pairs.jsonl", f"boxes:{MANY_BOXES} boxes")
    assert len(pairs["bbox_decisions"]) == MAX_INPUT_BOXES


def test_a_cache_whose_logs_is_a_file_runs_without_its_log(corpus: tuple, corpus_folder: Path) -> None:
    _, rows = corpus
    assert all(row_of(rows, BLOCKED_LOGS_TABLE, f"logs:{i}")["error"] is None for i in range(3))
    (cache,) = [p for p in corpus_folder.iterdir() if (p / "logs").is_file()]
    assert list(cache.glob("*_summary.json"))


def test_the_docs_report_these_figures(corpus: tuple) -> None:
    figures, _ = corpus
    assert figures.markdown() in (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
