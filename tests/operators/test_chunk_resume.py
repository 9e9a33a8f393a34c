"""Chunk-level resume: a run killed with SIGKILL mid-step continues from its last completed chunk,
and its final step files equal those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.sample_data import write_region_caption_table

RUNNER = textwrap.dedent(
    """
    import sys, time
    from dataflow_mm import FileStorage, ImageBboxGenerator, PipelineABC, PromptedVQAGenerator
    from tests.support.fake_serving import FakeVLMServing

    class SlowServing(FakeVLMServing):
        def _chat_batch(self, conversations, sampling):
            time.sleep(0.4)
            return super()._chat_batch(conversations, sampling)

    class Captions(PipelineABC):
        def __init__(self, table, cache):
            self.storage = FileStorage(table, cache_path=cache, file_name_prefix="rc", chunk_size=2)
            self.boxes = ImageBboxGenerator()
            self.vqa = PromptedVQAGenerator(SlowServing())

        def forward(self):
            self.boxes.run(self.storage.step())
            self.vqa.run(self.storage.step(), input_image_key="image_with_bbox")

    if __name__ == "__main__":
        Captions(sys.argv[1], sys.argv[2]).run()
    """
)


def start(script: Path, table: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(table), str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def normalized(path: Path, cache: Path) -> list[str]:
    return path.read_text().replace(json.dumps(str(cache))[1:-1], "<cache>").splitlines()


def wait_for_markers(parts: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(list(parts.glob("chunk_*.done.json"))) < count:
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.02)


@pytest.mark.parametrize("kill_after_chunks", [1, 3])
def test_sigkill_mid_step_then_rerun_equals_a_clean_run(tmp_path: Path, kill_after_chunks: int) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=9, size=(96, 72), n_boxes=2)
    script = tmp_path / "captions.py"
    script.write_text(RUNNER)

    clean_cache = tmp_path / "clean"
    clean = start(script, table, clean_cache)
    assert clean.wait(timeout=120) == 0, clean.stderr.read() if clean.stderr else ""

    cache = tmp_path / "killed"
    victim = start(script, table, cache)
    wait_for_markers(cache / ".rc_step2.jsonl.parts", kill_after_chunks)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (cache / "rc_step2.jsonl").exists()

    resumed = start(script, table, cache)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "step 1 ImageBboxGenerator: already complete, skipped" in err
    done_before = int(err.split("resuming after ")[1].split(" ")[0])
    assert done_before >= kill_after_chunks
    summary = json.loads((cache / "rc_summary.json").read_text())
    assert summary["servings"][0]["stats"]["requests"] == 9 - 2 * done_before

    for name in ("rc_step1.jsonl", "rc_step2.jsonl"):
        assert normalized(cache / name, cache) == normalized(clean_cache / name, clean_cache)
    assert not (cache / ".rc_step2.jsonl.parts").exists()
    assert summary["rows_in"] == summary["rows_out"] == 9
