"""Kill -9 during a rerun that reuses rows: nothing duplicated or lost, and the run after it sends only what
was still to do. The step files then equal a clean run's; an older cache (no row index) is computed as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from dataflow_mm.storage.manifest import StepManifest
from dataflow_mm.storage.row_index import rows_path
from tests.support.sample_data import write_jsonl

ROWS = 24

RUNNER = textwrap.dedent(
    """
    import sys, time
    from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator
    from tests.support.flaky_serving import FlakyServing

    table, cache, mode, log = sys.argv[1:5]

    class Slow(FlakyServing):
        def _chat_batch(self, conversations, sampling):
            if mode == "slow":
                time.sleep(0.3)
            out = super()._chat_batch(conversations, sampling)
            with open(log, "a") as handle:
                handle.write("".join(prompt.split()[-1] + "\\n" for prompt in map(prompt_of, conversations)))
            return out

    from tests.support.flaky_serving import prompt_of
    def even(prompt):
        last = prompt.split()[-1]
        return last.isdigit() and int(last) % 2 == 0

    serving = Slow(down=even if mode == "down" else None)

    class Answers(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(table, cache_path=cache, file_name_prefix="k", chunk_size=4)
            self.ask = PromptedVQAGenerator(serving)
            self.follow = PromptedVQAGenerator(serving, system_prompt="follow up")

        def forward(self):
            self.ask.run(self.storage.step(), input_image_key=None)
            self.follow.run(self.storage.step(), input_image_key=None, input_prompt_key="answer",
                            output_answer_key="more")

    Answers().run()
    """
)


def start(tmp_path: Path, cache: Path, mode: str, log: Path) -> subprocess.Popen:
    script = tmp_path / "answers.py"
    script.write_text(RUNNER)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "in.jsonl"), str(cache), mode, str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def finish(process: subprocess.Popen) -> None:
    assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""


def sent(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_kill_9_during_a_reusing_rerun_then_rerun_equals_a_clean_run(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"row {i}"} for i in range(ROWS)])
    cache = tmp_path / "cache"
    finish(start(tmp_path, cache, "down", tmp_path / "first.log"))  # even rows pending
    assert StepManifest.load(cache / "k_step1.jsonl").stats["rows_pending"] == ROWS // 2

    log = tmp_path / "rerun.log"
    victim = start(tmp_path, cache, "slow", log)
    parts = cache / ".k_step1.jsonl.parts"
    deadline = time.monotonic() + 60
    while len(list(parts.glob("chunk_*.done.json"))) < 2:
        assert time.monotonic() < deadline and victim.poll() is None, "the rerun never reached the kill point"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    before_kill = len(sent(log))

    finish(start(tmp_path, cache, "up", log))
    assert len(sent(log)) > before_kill  # the rest was sent after the kill
    # Step-1 requests of the reruns (the prompt's last word is the row id): only rows left pending (even),
    # each answered; no odd row was sent to step 1 again.
    step1_ids = [int(p) for p in sent(log) if p.isdigit()]
    assert all(i % 2 == 0 for i in step1_ids)
    assert sorted(set(step1_ids)) == list(range(0, ROWS, 2))

    clean = tmp_path / "clean"
    finish(start(tmp_path, clean, "up", tmp_path / "clean.log"))
    for name in ("k_step1.jsonl", "k_step2.jsonl"):
        assert (cache / name).read_bytes() == (clean / name).read_bytes()
        assert rows_path(cache / name).read_bytes() == rows_path(clean / name).read_bytes()
    assert not parts.exists()


def test_an_older_cache_without_row_index_recomputes_its_step_once(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"row {i}"} for i in range(8)])
    cache = tmp_path / "cache"
    finish(start(tmp_path, cache, "up", tmp_path / "first.log"))
    for step in ("k_step1.jsonl", "k_step2.jsonl"):  # as a cache written before row indexes
        manifest = StepManifest.load(cache / step)
        assert manifest is not None
        manifest.rows_sha256 = manifest.lines_sha256 = ""
        manifest.save(cache / step)
        rows_path(cache / step).unlink()
    log = tmp_path / "old.log"
    finish(start(tmp_path, cache, "up", log))
    assert sent(log) == []  # complete and unchanged: skipped, as before
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"row {i}"} for i in range(9)])
    finish(start(tmp_path, cache, "up", log))
    assert len([p for p in sent(log) if p.isdigit()]) == 9  # no index to reuse: the whole step, as before
    log2 = tmp_path / "new.log"
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"row {i}"} for i in range(10)])
    finish(start(tmp_path, cache, "up", log2))
    assert [p for p in sent(log2) if p.isdigit()] == ["9"]  # the index written by that run is used now
    manifest = StepManifest.load(cache / "k_step1.jsonl")
    assert manifest is not None and manifest.stats["rows_reused"] == 9 and manifest.rows_sha256
