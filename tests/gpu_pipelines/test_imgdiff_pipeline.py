"""The Img-Diff pipeline script end to end, offline: tiny LLaVA-NeXT via the transformers backend, the scoring
models' tiny fallback, the shipped demo pairs, resume; plus the fused variant with the real MiniLM in process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dataflow_mm.pipeline.templates import load_pipeline_script
from tests.support.fake_serving import FakeVLMServing

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "imgdiff_pipeline.py"
DEMO = REPO / "data" / "imgdiff"
FINAL = ("region_caption1", "region_caption2", "bboxes", "bbox_difference_captions")

pytestmark = pytest.mark.slow


def load_script() -> ModuleType:
    return load_pipeline_script("imgdiff_pipeline")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_row(row: dict) -> None:
    """Structure only (the tiny models' words and scores mean nothing)."""
    assert row["error"] is None
    assert len({len(row[key]) for key in FINAL}) == 1
    for d in row["bbox_decisions"]:
        assert set(d) >= {"bbox", "bbox_xyxy", "itm_score1", "itm_score2", "caption_similarity", "kept", "drop_reason"}
        if d["kept"]:
            assert 0.0 <= d["itm_score1"] <= 1.0 and 0.0 <= d["itm_score2"] <= 1.0
            assert -1.0 <= d["caption_similarity"] <= 1.0
            assert isinstance(d["difference_caption"], str)
        else:
            assert d["dropped_at"] and d["drop_reason"]
    kept = [d for d in row["bbox_decisions"] if d["kept"]]
    if kept:
        assert row["bboxes"] == [d["bbox"] for d in kept]
    else:
        assert row["bboxes"] == [[0, 0, 0, 0]] and row["bbox_difference_captions"] == [""]


def test_script_runs_the_demo_pairs_offline_and_resumes(tmp_path: Path, tiny_llava_dir: Path) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(DEMO, workspace / "data" / "imgdiff")  # what `dataflowmm init` lays out
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "DATAFLOW_MM_TINY_DIR": str(tiny_llava_dir.parent),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, str(SCRIPT), "--backend", "hf", "--model_path", str(tiny_llava_dir), "--max_tokens", "6",
           "--temperature", "0", "--similarity_min_score", "-1", "--keep_difference_images"]  # fmt: skip
    done = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # BLIP and CLIP defaults are not available offline: tiny stand-ins, and the run says their scores mean nothing.
    assert done.stdout.count("MEANINGLESS") == 2
    assert "rows: 4 in, 4 out, 0 rejected" in done.stdout
    cache = workspace / "cache" / "imgdiff"
    rows = read_rows(cache / "imgdiff_step5.jsonl")
    demo = read_rows(DEMO / "imgdiff_demo.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in demo]
    assert [r["bbox_source"] for r in rows] == ["input", "proposed", "proposed", "proposed"]
    assert len(rows[0]["bbox_decisions"]) == 2  # the given boxes
    assert all(r["bbox_decisions"] for r in rows)  # every edited pair got a proposal
    for row in rows:
        check_row(row)
        for path in row["difference_images"]:
            assert not path or ((workspace / path).is_file() and Path(path).parent.parent == Path("cache/imgdiff"))
    assert sum(len(d) for r in rows for d in [r["bbox_difference_captions"]] if d != [""]) >= 1

    again = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already complete, skipped") == 5


def test_fused_pipeline_with_minilm_similarity_in_process(
    tmp_path: Path, tiny_blip_dir: Path, minilm_dir: Path
) -> None:
    serving = FakeVLMServing()
    pipeline = load_script().ImgDiffPipeline(
        serving,
        first_entry_file=str(DEMO / "imgdiff_demo.jsonl"),
        cache_path=str(tmp_path / "cache"),
        blip_model=str(tiny_blip_dir),
        similarity_model=str(minilm_dir),
        itm_min_score=0.0,
        similarity_min_score=-1.0,
        similarity_max_score=1.0,
        fused=True,
        allow_tiny_fallback=False,
    )
    summary = pipeline.run()
    assert summary.rows_out == 4 and [s.operator for s in summary.steps] == [
        "ImgDiffDifferenceAreaProposer", "ImgDiffDifferenceCaptionGenerator"
    ]  # fmt: skip
    assert pipeline.similarity.kind == "sentence_transformers"
    assert len(serving.calls) == 2  # one chunk: one region call, one difference call
    (note,) = pipeline.smoke_test_notes()  # the tiny BLIP's scores mean nothing; MiniLM is a real model
    assert "--blip_model" in note
    for row in read_rows(tmp_path / "cache" / "imgdiff_step2.jsonl"):
        check_row(row)
    pipeline.cleanup()


def test_wrong_keys_fail_before_any_model_loads(tmp_path: Path) -> None:
    from dataflow_mm.common.errors import PipelineCompileError

    serving = FakeVLMServing()
    pipeline = load_script().ImgDiffPipeline(
        serving,
        first_entry_file=str(DEMO / "imgdiff_demo.jsonl"),
        cache_path=str(tmp_path / "cache"),
        input_bbox_key="boxes",
        propose_missing_boxes=False,
    )
    with pytest.raises(PipelineCompileError, match="input key 'boxes'"):
        pipeline.run()
    assert serving.calls == [] and not pipeline.itm_scorer.loaded and not pipeline.similarity.loaded


def test_captioned_pairs_run_the_model_proposer_in_one_command_and_resume(
    tmp_path: Path, tiny_llava_dir: Path, tiny_blip_dir: Path, tiny_clip_dir: Path, tiny_owlv2_dir: Path
) -> None:
    """Pairs with caption1/caption2 and no boxes -> generated areas -> difference captions (``--proposer auto``)."""
    from tests.support.imgdiff_pairs import write_captioned_pairs

    table = write_captioned_pairs(tmp_path / "pairs", 3)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DATAFLOW_MM_TINY_DIR": str(tiny_llava_dir.parent),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, str(SCRIPT), "--backend", "hf", "--model_path", str(tiny_llava_dir), "--max_tokens", "4",
           "--temperature", "0", "--first_entry_file", str(table), "--cache_path", str(tmp_path / "cache"),
           "--blip_model", str(tiny_blip_dir), "--similarity_model", str(tiny_clip_dir), "--similarity_min_score", "-1",
           "--detector_model", str(tiny_owlv2_dir), "--image_similarity_model", str(tiny_clip_dir),
           "--no_tiny_fallback"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("MEANINGLESS") == 4  # BLIP, caption similarity, image similarity, detection
    assert "ImgDiffDifferenceAreaGenerator" in done.stdout and "ImgDiffDifferenceAreaProposer" not in done.stdout
    rows = read_rows(tmp_path / "cache" / "imgdiff_step5.jsonl")
    assert [r["bbox_source"] for r in rows] == ["generated"] * 3
    for row in rows:
        check_row(row)
        assert row["area_decisions"] and row["changed_nouns"]["caption1"]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already complete, skipped") == 5


def test_the_same_pipeline_object_run_twice_skips_every_step(
    tmp_path: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Provenance is configuration: the scorers' tiny fallback (and the text scorer picking CLIP on
    load) leave ``describe()`` unchanged, so the second run of one object reruns nothing."""
    monkeypatch.setenv("DATAFLOW_MM_TINY_DIR", str(tiny_models_dir))
    serving = FakeVLMServing()
    pipeline = load_script().ImgDiffPipeline(
        serving,
        first_entry_file=str(DEMO / "imgdiff_demo.jsonl"),
        cache_path=str(tmp_path / "cache"),
        blip_model="no-such-org/blip",
        similarity_model="no-such-org/similarity",
        itm_min_score=0.0,
        similarity_min_score=-1.0,
        proposer="pixel",
        allow_tiny_fallback=True,
    )
    first = pipeline.run()
    assert not any(step.skipped for step in first.steps) and len(first.steps) == 5
    calls = len(serving.calls)
    again = pipeline.run()
    assert all(step.skipped for step in again.steps)
    assert len(serving.calls) == calls
    pipeline.cleanup()


def test_a_scoring_model_the_user_named_that_cannot_load_stops_with_exit_2(
    tmp_path: Path, tiny_llava_dir: Path
) -> None:
    """Only a shipped default model may fall back to a tiny stand-in: a typo in --blip_model stops the run."""
    workspace = tmp_path / "ws"
    shutil.copytree(DEMO, workspace / "data" / "imgdiff")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DATAFLOW_MM_TINY_DIR": str(tiny_llava_dir.parent),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    typo = tmp_path / "models" / "blip-itm-bsae-coco"
    cmd = [sys.executable, str(SCRIPT), "--backend", "hf", "--model_path", str(tiny_llava_dir), "--max_tokens", "4",
           "--temperature", "0", "--blip_model", str(typo)]  # fmt: skip
    done = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert str(typo) in done.stderr and "Traceback" not in done.stderr
    # the shipped default caption-similarity model may fall back (it is announced); BLIP never does
    assert "tiny random-weight blip" not in (done.stdout + done.stderr).lower()
    assert "image-text matching (BLIP) ran on a tiny" not in done.stdout
