"""A run never replaces another run's step files (issue 24 items 3 and 4).

* ``P; P --first_entry_file CACHE/rc_step2.jsonl``: the second run's steps number on from step 2 and
  would replace the first run's ``rc_step3.jsonl`` (its final output): exit 2 before any work;
* an extra output (``--output_image_with_bbox_path``) naming any file the cache writes (the summary, a
  step file, a manifest, a run log, the lock) is refused;
* region captions, then Img-Diff with the same cache and ``--file_name_prefix``: the step files of
  the region pipeline are never replaced (exit 2 naming the pipeline and the fix).

Every run uses ``--backend api`` against the local fake endpoint, as ``test_run_safety`` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.openai_test_server import OpenAITestServer
from tests.support.script_runs import assert_one_line_exit_2, run_script, write_photo_rows

pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
REGION_SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
IMGDIFF_SCRIPT = REPO / "gpu_pipelines" / "imgdiff_pipeline.py"
IMAGES = REPO / "data" / "image_region_caption"


def run(script: Path, url: str, first_entry: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, str(script), "--backend", "api", "--api_url", url, "--model_name", "test-model",
        "--first_entry_file", str(first_entry), "--cache_path", str(cache), *extra,
    ]  # fmt: skip
    return run_script(cmd, timeout=300)


def snapshot(cache: Path) -> dict[str, bytes]:
    """Every file of the cache but the run logs (a refused run may still log), by name."""
    return {
        str(p.relative_to(cache)): p.read_bytes()
        for p in sorted(cache.rglob("*"))
        if p.is_file() and "logs" not in p.relative_to(cache).parts
    }


@pytest.fixture(scope="module")
def server():
    with OpenAITestServer() as running:
        yield running


@pytest.fixture
def finished(tmp_path: Path, server: OpenAITestServer) -> tuple[Path, Path]:
    """A finished region-caption run (steps 1-3) with prefix ``rc``: (its input, its cache)."""
    first_entry, cache = write_photo_rows(tmp_path / "in.jsonl", 3), tmp_path / "cache"
    proc = run(REGION_SCRIPT, server.base_url, first_entry, cache, "--file_name_prefix", "rc")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cache / "rc_step3.jsonl").is_file()
    return first_entry, cache


def test_an_earlier_step_file_as_input_never_overwrites_the_runs_later_steps(
    finished: tuple[Path, Path], server: OpenAITestServer
) -> None:
    _, cache = finished
    before = snapshot(cache)
    sent = len(server.requests)
    proc = run(REGION_SCRIPT, server.base_url, cache / "rc_step2.jsonl", cache, "--file_name_prefix", "rc")
    message = assert_one_line_exit_2(proc)
    assert "rc_step3.jsonl" in message and "--file_name_prefix" in message and "--cache_path" in message
    assert snapshot(cache) == before and len(server.requests) == sent  # nothing written, nothing asked


def test_with_another_prefix_the_step_file_is_a_fine_input(finished: tuple[Path, Path], server) -> None:
    _, cache = finished
    before = snapshot(cache)
    proc = run(REGION_SCRIPT, server.base_url, cache / "rc_step1.jsonl", cache, "--file_name_prefix", "again")
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = {k: v for k, v in before.items() if k.startswith("rc_")}
    assert mine and {k: v for k, v in snapshot(cache).items() if k.startswith("rc_")} == mine
    assert len((cache / "again_step3.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "name", ["rc_summary.json", "rc_step1.jsonl.manifest.json", "rc_step2.jsonl", "logs/x.log", ".dataflow_mm.lock"]
)
def test_an_extra_output_may_not_be_a_file_the_cache_writes(
    finished: tuple[Path, Path], server: OpenAITestServer, name: str
) -> None:
    first_entry, cache = finished
    before = snapshot(cache)
    target = cache / name
    proc = run(
        REGION_SCRIPT, server.base_url, first_entry, cache, "--file_name_prefix", "rc",
        "--output_image_with_bbox_path", str(target),
    )  # fmt: skip
    message = assert_one_line_exit_2(proc)
    assert str(target) in message
    assert snapshot(cache) == before


def test_a_second_pipeline_with_the_same_cache_and_prefix_replaces_nothing(
    finished: tuple[Path, Path], server: OpenAITestServer, tmp_path: Path
) -> None:
    _, cache = finished
    before = snapshot(cache)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"image_path1": str(IMAGES / "street.jpg"), "image_path2": str(IMAGES / "park.jpg")}) + "\n"
    )
    proc = run(IMGDIFF_SCRIPT, server.base_url, pairs, cache, "--file_name_prefix", "rc")
    message = assert_one_line_exit_2(proc)
    assert "ImageRegionCaptionPipeline" in message and "ImgDiffPipeline" in message
    assert "--file_name_prefix" in message
    assert snapshot(cache) == before
