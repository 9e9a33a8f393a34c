"""The region-caption pipeline end to end: transformers backend on tiny Qwen2.5-VL and LLaVA-NeXT models,
the script's offline fallback, and clean user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dataflow_mm import LocalModelVLMServing_hf
from dataflow_mm.pipeline.templates import load_pipeline_script
from tests.support.sample_data import write_region_caption_table

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
SEED_FIELDS = {
    "image",
    "type",
    "bbox",
    "normalized_bbox",
    "result_file",
    "image_with_bbox",
    "valid_bboxes_num",
    "prompt",
    "answer",
}


def load_script() -> ModuleType:
    return load_pipeline_script("image_region_caption_pipeline")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("model_fixture", ["tiny_qwen_dir", "tiny_llava_dir"])
def test_pipeline_answers_every_row_with_one_batched_call_per_chunk(
    tmp_path: Path, model_fixture: str, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    table = write_region_caption_table(tmp_path / "imgs", n_rows=5, size=(160, 120), n_boxes=2, without_boxes=1)
    serving = LocalModelVLMServing_hf(str(model_dir), max_tokens=6, temperature=0.0, batch_size=8)
    calls: list[int] = []
    original = serving._chat_batch
    serving._chat_batch = lambda conversations, sampling: (
        calls.append(len(conversations))
        or original(  # type: ignore[method-assign]
            conversations, sampling
        )
    )
    pipeline = load_script().ImageRegionCaptionPipeline(
        serving,
        first_entry_file=str(table),
        cache_path=str(tmp_path / "cache"),
        chunk_size=3,
        output_image_with_bbox_path=None,
    )
    summary = pipeline.run()
    assert calls == [3, 2]
    rows = read_rows(tmp_path / "cache" / "region_caption_step2.jsonl")
    assert len(rows) == 5 and summary.rows_out == 5 and summary.smoke_test
    for row in rows:
        assert row.keys() >= SEED_FIELDS
        assert row["error"] is None
        assert isinstance(row["answer"], str) and row["answer"].strip()
    assert [r["type"] for r in rows] == ["with_bbox"] * 4 + ["without_bbox"]
    serving.cleanup()


def run_script(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_script_falls_back_to_a_tiny_model_offline_and_says_so(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3, size=(160, 120), n_boxes=2)
    done = run_script(
        [
            "--smoke_test",  # a model the user names falls back only when they ask for a smoke test
            "--model_path",
            "no-such-org/no-such-model",
            "--backend",
            "hf",
            "--max_tokens",
            "6",
            "--first_entry_file",
            str(table),
            "--cache_path",
            str(tmp_path / "cache"),
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is not available" in done.stderr and "MEANINGLESS" in done.stderr
    assert "tiny random-weight smoke-test model" in done.stdout
    assert "rows: 3 in, 3 out, 0 rejected" in done.stdout
    rows = read_rows(tmp_path / "cache" / "region_caption_step2.jsonl")
    assert all(r["answer"] for r in rows)
    assert (tmp_path / "cache" / "image_with_bbox_result.jsonl").is_file()

    again = run_script(
        [
            "--smoke_test",
            "--model_path",
            "no-such-org/no-such-model",
            "--backend",
            "hf",
            "--max_tokens",
            "6",
            "--first_entry_file",
            str(table),
            "--cache_path",
            str(tmp_path / "cache"),
        ],
        cwd=tmp_path,
    )
    assert again.returncode == 0
    assert again.stdout.count("already complete, skipped") == 3  # boxes, answers, region_captions
    parsed = read_rows(tmp_path / "cache" / "region_caption_step3.jsonl")
    assert [len(r["region_captions"]) for r in parsed] == [r["valid_bboxes_num"] for r in parsed]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--first_entry_file", "missing.jsonl"], "Input file does not exist"),
        (["--input_image_key", "picture"], "input key 'picture' is not a column"),
        (["--input_bbox_key", "bboxes"], "input key 'bboxes' is not a column there. Did you mean 'bbox'?"),
        (["--no_tiny_fallback", "--model_path", "no-such-org/no-such-model"], "is not available"),
    ],
)
def test_user_errors_exit_2_with_one_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1, size=(64, 48), n_boxes=1)
    base = [
        "--backend",
        "hf",
        "--smoke_test",
        "--model_path",
        str(tmp_path / "unused"),
        "--first_entry_file",
        str(table),
        "--cache_path",
        str(tmp_path / "cache"),
    ]
    done = run_script([*base, *args], cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_model_path_the_user_gave_that_cannot_load_stops_with_exit_2(tmp_path: Path) -> None:
    """A typo in --model_path never runs the job on the tiny random model (only the shipped default may)."""
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1, size=(64, 48), n_boxes=1)
    typo = tmp_path / "models" / "Qwen2.5-VL-3B-Instuct"
    args = ["--backend", "hf", "--model_path", str(typo), "--first_entry_file", str(table)]
    done = run_script([*args, "--cache_path", str(tmp_path / "cache")], cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:]
    assert str(typo) in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr and "MEANINGLESS" not in done.stderr + done.stdout
    assert not list((tmp_path / "cache").glob("*_step*.jsonl"))
