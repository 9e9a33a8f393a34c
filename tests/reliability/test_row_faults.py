"""One bad row never stops a run (issue #12, items 5-9, 16, 17), in both pipelines: image paths the OS
refuses, a box beyond float range, a line nested 100,000 deep, lone surrogates, a chunk without the image
key, ``error`` fields that are not errors, and integer columns beside failed rows. Each of these was a
traceback (exit 1, on every rerun) or a silently wrong row before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dataflow_mm import FileStorage, ImageBboxGenerator, PipelineABC, PromptedVQAGenerator
from dataflow_mm.common.errors import error_class_of
from dataflow_mm.pipeline.summary import RunSummary
from dataflow_mm.pipeline.templates import load_pipeline_script
from dataflow_mm.serving.api_serving import APIVLMServing_openai
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.storage.jsonl_reading import MAX_JSON_DEPTH
from tests.support.bad_inputs import build_region_caption_corpus, write_bad_images
from tests.support.fake_serving import FakeVLMServing
from tests.support.openai_test_server import OpenAITestServer

REPO = Path(__file__).resolve().parents[2]
BOX = [10, 10, 30, 30]
DEEP_LINES = [
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    '{"x": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}",  # one level past the limit
]


class RegionCaptions(PipelineABC):
    def __init__(self, table: Path, cache: Path, serving: VLMServing, chunk_size: int, cache_type: str) -> None:
        self.storage = FileStorage(
            str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=chunk_size, cache_type=cache_type
        )
        self.boxes = ImageBboxGenerator()
        self.vqa = PromptedVQAGenerator(serving)

    def forward(self) -> None:
        self.boxes.run(self.storage.step(), input_image_key="image", input_bbox_key="bbox")
        self.vqa.run(self.storage.step(), input_image_key="image_with_bbox", input_prompt_key="prompt")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def dumps(row: dict[str, Any]) -> str:
    return json.dumps(row)  # ensure_ascii: a lone surrogate is written as the escape "\ud800"


def read_step(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_region(
    folder: Path,
    lines: list[str],
    chunk_size: int = 1,
    serving: VLMServing | None = None,
    cache_type: str = "jsonl",
    name: str = "table.jsonl",
) -> tuple[RunSummary, list[dict[str, Any]]]:
    table = folder / name
    if name.endswith(".jsonl"):
        write_lines(table, lines)
    cache = folder / "cache"
    summary = RegionCaptions(table, cache, serving or FakeVLMServing(), chunk_size, cache_type).run()
    again = RegionCaptions(table, cache, serving or FakeVLMServing(), chunk_size, cache_type).run()
    assert all(step.skipped for step in again.steps)  # a rerun finds every step complete
    return summary, read_step(cache / f"rc_step2.{cache_type}")


def run_imgdiff(
    folder: Path, lines: list[str], models: tuple[Path, Path], chunk_size: int = 1
) -> tuple[RunSummary, list[dict[str, Any]]]:
    table = write_lines(folder / "pairs.jsonl", lines)
    script = load_pipeline_script("imgdiff_pipeline")
    results = []
    for _ in range(2):
        pipeline = script.ImgDiffPipeline(
            FakeVLMServing(), first_entry_file=str(table), cache_path=str(folder / "cache"), chunk_size=chunk_size,
            bbox_format="xywh", blip_model=str(models[0]), similarity_model=str(models[1]), itm_min_score=0.0,
            similarity_min_score=-1.0, similarity_max_score=1.0,
        )  # fmt: skip
        results.append(pipeline.run())
        pipeline.cleanup()
    assert all(step.skipped for step in results[1].steps)
    return results[0], read_step(folder / "cache" / "imgdiff_step5.jsonl")


@pytest.fixture
def good(tmp_path: Path) -> str:
    return str(write_bad_images(tmp_path / "images")["good.jpg"])


@pytest.fixture
def scorers(tiny_blip_dir: Path, tiny_clip_dir: Path) -> tuple[Path, Path]:
    return tiny_blip_dir, tiny_clip_dir


UNOPENABLE = {
    "component over 255 bytes": "/tmp/" + "a" * 300 + ".jpg",
    "deep component over 255 bytes": "rel/" + "b" * 256 + "/c.jpg",
    "unknown user": "~nosuchuser/a.jpg",
    "NUL byte": "images/a\u0000b.jpg",
    "lone surrogate": "/tmp/x\ud800.jpg",
}


# -- item 5 (and 8 in a path) -------------------------------------------------------------------------


def test_unopenable_image_paths_end_their_row_region_captions(tmp_path: Path, good: str) -> None:
    lines = [dumps({"case": name, "image": path, "bbox": [BOX]}) for name, path in UNOPENABLE.items()]
    summary, rows = run_region(tmp_path, [*lines, dumps({"case": "good", "image": good, "bbox": [BOX]})])
    assert summary.rows_out == len(rows) == len(UNOPENABLE) + 1
    for row in rows[:-1]:
        assert error_class_of(row["error"]) == "ImageNotFoundError", row
    assert rows[-1]["error"] is None and rows[-1]["answer"]


def test_unopenable_image_paths_end_their_row_imgdiff(tmp_path: Path, good: str, scorers: tuple) -> None:
    lines = [
        dumps({"case": name, "image_path1": path, "image_path2": good, "bboxes": [BOX]})
        for name, path in UNOPENABLE.items()
    ]
    lines.append(dumps({"case": "good", "image_path1": good, "image_path2": good, "bboxes": [BOX]}))
    summary, rows = run_imgdiff(tmp_path, lines, scorers)
    assert summary.rows_out == len(rows) == len(UNOPENABLE) + 1
    for row in rows[:-1]:
        assert error_class_of(row["error"]) == "ImageNotFoundError", row
    assert rows[-1]["error"] is None and rows[-1]["bbox_difference_captions"]


# -- item 6 ------------------------------------------------------------------------------------------------

HUGE = "1" + "0" * 400  # 10**400: an integer JSON reads exactly, with no float value


def test_box_beyond_float_range_region_captions(tmp_path: Path, good: str) -> None:
    image = f'"image": {json.dumps(good)}'
    lines = [
        f'{{{image}, "bbox": [[{HUGE}, 10, 20, 20]]}}',
        f'{{{image}, "bbox": [[10, 10, 20, 20], [10, 10, {HUGE}, 20]]}}',
        f'{{{image}, "bbox": [{HUGE}, 10, 20, 20]}}',
    ]
    _, rows = run_region(tmp_path, lines)
    assert error_class_of(rows[0]["error"]) == "InvalidBoxError" and "too large" in rows[0]["error"]
    assert rows[1]["error"] is None and rows[1]["valid_bboxes_num"] == 1 and "too large" in rows[1]["bbox_dropped"][0]
    assert error_class_of(rows[2]["error"]) == "InvalidBoxError"


def test_box_beyond_float_range_imgdiff(tmp_path: Path, good: str, scorers: tuple) -> None:
    pair = f'"image_path1": {json.dumps(good)}, "image_path2": {json.dumps(good)}'
    lines = [
        f'{{{pair}, "bboxes": [[{HUGE}, 10, 20, 20]]}}',
        f'{{{pair}, "bboxes": [[10, 10, 20, 20], [{HUGE}, 0, 0, 0]]}}',
        f'{{{pair}, "bboxes": [{HUGE}, 0, 0, 0]}}',
    ]
    _, rows = run_imgdiff(tmp_path, lines, scorers)
    for row in rows:
        assert row["error"] is None, row["error"]  # a bad box is dropped with its reason; the row goes on
        dropped = [d for d in row["bbox_decisions"] if not d["kept"]]
        assert dropped and dropped[-1]["dropped_at"] == "parse" and "too large" in dropped[-1]["drop_reason"]
    assert [d["kept"] for d in rows[1]["bbox_decisions"]] == [True, False]


# -- item 7 ------------------------------------------------------------------------------------------------


def test_deeply_nested_lines_are_rejected_region_captions(tmp_path: Path, good: str) -> None:
    lines = [*DEEP_LINES, dumps({"image": good, "bbox": [BOX], "shallow": [[[[1]]]]})]
    summary, rows = run_region(tmp_path, lines)
    assert summary.steps[0].rejected == {"TooDeepJSONLine": len(DEEP_LINES)}
    assert summary.rows_in == summary.rows_out + summary.rows_rejected and len(rows) == 1
    assert rows[0]["error"] is None and rows[0]["shallow"] == [[[[1]]]]
    saved = read_step(tmp_path / "cache" / "rc_step1.jsonl.rejects.jsonl")
    assert [r["line"] for r in saved] == [1, 2, 3] and all(str(MAX_JSON_DEPTH) in r["message"] for r in saved)


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "parquet"])
def test_a_record_at_the_depth_limit_goes_through_every_step(tmp_path: Path, good: str, cache_type: str) -> None:
    deepest = json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))  # the row itself is level 1
    lines = [dumps({"image": good, "bbox": [BOX], "deep": deepest})]
    summary, rows = run_region(tmp_path, lines, cache_type=cache_type)
    assert summary.rows_rejected == 0 and rows[0]["error"] is None and rows[0]["answer"]


def test_deeply_nested_lines_are_rejected_imgdiff(tmp_path: Path, good: str, scorers: tuple) -> None:
    lines = [*DEEP_LINES, dumps({"image_path1": good, "image_path2": good, "bboxes": [BOX]})]
    summary, rows = run_imgdiff(tmp_path, lines, scorers)
    assert summary.steps[0].rejected == {"TooDeepJSONLine": len(DEEP_LINES)} and len(rows) == 1


@pytest.mark.parametrize("script", ["image_region_caption_pipeline", "imgdiff_pipeline"])
def test_a_deeply_nested_json_input_stops_the_run_with_exit_2(tmp_path: Path, script: str) -> None:
    table = tmp_path / "deep.json"
    table.write_text("[" + '{"a":' * 100_000 + "1" + "}" * 100_000 + "]")
    proc = subprocess.run(
        [sys.executable, str(REPO / "gpu_pipelines" / f"{script}.py"), "--backend", "api", "--api_url",
         "http://127.0.0.1:9/v1", "--model_name", "m", "--first_entry_file", str(table),
         "--cache_path", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OPENAI_API_KEY": "k"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"nested deeper than {MAX_JSON_DEPTH}" in proc.stderr


# -- item 8 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache_type", ["jsonl", "parquet"])
def test_lone_surrogates_in_input_fields_become_replacement_characters(
    tmp_path: Path, good: str, cache_type: str
) -> None:
    lines = [
        dumps({"image": good, "bbox": [BOX], "note": "a\ud800b", "k\udfff": ["\udbff"]}),
        dumps({"image": good, "bbox": "\ud800", "note": "x"}),
    ]
    _, rows = run_region(tmp_path, lines, chunk_size=2, cache_type=cache_type)
    assert rows[0]["error"] is None and rows[0]["note"] == "a\ufffdb" and rows[0]["k\ufffd"] == ["\ufffd"]
    assert error_class_of(rows[1]["error"]) == "InvalidBoxError" and "\ufffd" in rows[1]["error"]


def test_lone_surrogates_in_a_json_input(tmp_path: Path, good: str) -> None:
    (tmp_path / "table.json").write_text(json.dumps([{"image": good, "bbox": [BOX], "note": "\ud800"}]))
    _, rows = run_region(tmp_path, [], name="table.json")
    assert rows[0]["error"] is None and rows[0]["note"] == "\ufffd"


def test_a_lone_surrogate_in_an_api_answer_is_replaced(tmp_path: Path, good: str) -> None:
    with OpenAITestServer(answer_fn=lambda body: "region 1: a cat \ud800 on a mat") as server:
        serving = APIVLMServing_openai(server.url, "test-model", api_key="k", api_key_env=None, max_retries=0)
        _, rows = run_region(tmp_path, [dumps({"image": good, "bbox": [BOX]})], serving=serving)
    assert rows[0]["error"] is None and rows[0]["answer"] == "region 1: a cat \ufffd on a mat"


def test_lone_surrogates_imgdiff(tmp_path: Path, good: str, scorers: tuple) -> None:
    lines = [
        dumps({"image_path1": good, "image_path2": good, "bboxes": [BOX], "note": "\ud800"}),
        dumps({"image_path1": good + "\udc00", "image_path2": good, "bboxes": [BOX]}),
    ]
    _, rows = run_imgdiff(tmp_path, lines, scorers)
    assert rows[0]["error"] is None and rows[0]["note"] == "\ufffd"
    assert error_class_of(rows[1]["error"]) == "ImageNotFoundError"


# -- item 9 ------------------------------------------------------------------------------------------------


def test_a_chunk_without_the_image_key_region_captions(tmp_path: Path, good: str) -> None:
    summary, rows = run_region(tmp_path, [dumps({"image": good, "bbox": [BOX]}), '{"id": 1}', '{"id": 2}'])
    assert rows[0]["error"] is None
    for row in rows[1:]:
        assert error_class_of(row["error"]) == "MissingFieldError" and "'image'" in row["error"]
    assert summary.steps[0].row_errors == {"MissingFieldError": 2}


def test_a_chunk_without_the_image_key_imgdiff(tmp_path: Path, good: str, scorers: tuple) -> None:
    lines = ['{"id": 1}', dumps({"image_path1": good, "image_path2": good, "bboxes": [BOX]}), '{"id": 2}']
    _, rows = run_imgdiff(tmp_path, lines, scorers)
    assert error_class_of(rows[0]["error"]) == "MissingFieldError" and rows[1]["error"] is None
    assert error_class_of(rows[2]["error"]) == "MissingFieldError"


# -- item 16 -----------------------------------------------------------------------------------------------


def test_only_a_non_empty_string_in_error_is_an_error(tmp_path: Path, good: str) -> None:
    not_errors = ["", False, 0, [], {}, None]
    lines = [dumps({"image": good, "bbox": [BOX], "error": value}) for value in not_errors]
    lines.append(dumps({"image": good, "bbox": [BOX], "error": "UpstreamError: failed earlier"}))
    summary, rows = run_region(tmp_path, lines, chunk_size=3)
    for row in rows[:-1]:
        assert row["error"] is None and isinstance(row["answer"], str) and row["valid_bboxes_num"] == 1
    assert rows[-1]["error"] == "UpstreamError: failed earlier" and rows[-1].get("answer") is None
    assert summary.steps[0].row_errors == {"UpstreamError": 1}
    assert summary.steps[0].metrics["input_error_values_ignored"] == len(not_errors) - 1
    assert "input_error_values_ignored 5" in summary.text()


# -- item 17 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache_type", ["jsonl", "parquet"])
def test_integer_columns_stay_integers_beside_failed_rows(tmp_path: Path, good: str, cache_type: str) -> None:
    lines = [
        dumps({"image": good, "bbox": [BOX]}),
        dumps({"image": "missing.jpg", "bbox": [BOX]}),
        dumps({"image": good, "bbox": [BOX], "error": "UpstreamError: x"}),
    ]
    _, rows = run_region(tmp_path, lines, chunk_size=3, cache_type=cache_type)
    assert [type(r["valid_bboxes_num"]) for r in rows] == [int, type(None), type(None)]
    if cache_type == "jsonl":
        step1 = (tmp_path / "cache" / "rc_step1.jsonl").read_text()
        assert '"valid_bboxes_num":1,' in step1 and "1.0" not in step1


def test_the_key_check_reads_past_the_first_rows(tmp_path: Path, good: str) -> None:
    lines = [dumps({"id": i}) for i in range(250)] + [dumps({"id": 250, "image": good, "bbox": [BOX]})]
    summary, rows = run_region(tmp_path, lines, chunk_size=64)
    assert summary.rows_out == 251 and rows[250]["error"] is None and rows[250]["answer"]
    assert summary.steps[0].row_errors == {"MissingFieldError": 250}


# -- the whole corpus through the shipped script (API backend), as a user runs it -----------------------------


def test_the_script_finishes_the_corpus_with_exit_0_on_every_run(tmp_path: Path) -> None:
    table, cases, rejects = build_region_caption_corpus(tmp_path)
    cache = tmp_path / "cache"
    env = {**os.environ, "CORPUS_KEY": "k", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    with OpenAITestServer(answer_fn=lambda body: "region 1: a thing \ud800") as server:
        for _ in range(2):  # the second run resumes and finds every step complete
            proc = subprocess.run(
                [sys.executable, str(REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"), "--backend", "api",
                 "--api_url", server.base_url, "--model_name", "test-model", "--api_key_env", "CORPUS_KEY",
                 "--first_entry_file", str(table), "--cache_path", str(cache), "--chunk_size", "1",
                 "--output_image_with_bbox_path", str(cache / "result.jsonl")],
                capture_output=True, text=True, timeout=300, env=env,
            )  # fmt: skip
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = read_step(cache / "result.jsonl")
    assert len(rows) == len(cases) and sum(bool(r["error"]) for r in rows) == sum(bool(c.error) for c in cases)
    assert json.loads((cache / "region_caption_summary.json").read_text())["rows_rejected"] == sum(rejects.values())
