"""Streaming between steps (local and Ray runners): step 2 works on a chunk before step 1 has finished its
file, and every step file equals, byte for byte, the one of a sequential (``--no_streaming``) run, also
after a ``kill -9`` in the middle of both steps, resumed on either runner."""

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

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dataflow_mm import FileStorage, ImageBboxGenerator, PipelineABC, PromptedVQAGenerator
    from dataflow_mm.engine import LocalRunner
    from tests.support.fake_serving import FakeVLMServing

    class SlowServing(FakeVLMServing):
        # Sleeps per call; the watching one notes (in a file: it may run in a Ray actor) whether
        # the file of the step it reads existed when it was called.

        def __init__(self, seconds, watch=None):
            super().__init__()
            self.seconds, self.watch = seconds, watch
            self.concurrent_chunks = int(sys.argv[4]) if len(sys.argv) > 4 else 1  # chunks in flight

        def _chat_batch(self, conversations, sampling):
            if self.watch is not None:
                with open(str(self.watch) + ".saw", "a") as log:
                    print(Path(self.watch).exists(), file=log)
            time.sleep(self.seconds)
            return super()._chat_batch(conversations, sampling)

    def runner(mode):
        if mode.startswith("ray"):
            from dataflow_mm.engine.ray_runner import RayRunner

            # 4 logical CPUs: both model operators' actors and a CPU for the box step fit at once.
            return RayRunner(num_cpus=4, streaming=mode == "ray", ray_init_kwargs={"log_to_driver": False})
        return LocalRunner(streaming=mode == "streaming")

    class TwoModelSteps(PipelineABC):
        def __init__(self, table, cache):
            self.storage = FileStorage(table, cache_path=cache, file_name_prefix="st", chunk_size=2)
            self.boxes = ImageBboxGenerator()
            self.first = PromptedVQAGenerator(SlowServing(0.3))
            self.second = PromptedVQAGenerator(SlowServing(0.3, watch=Path(cache) / "st_step2.jsonl"))

        def forward(self):
            self.boxes.run(self.storage.step())
            self.first.run(self.storage.step(), input_image_key="image_with_bbox", output_answer_key="first")
            self.second.run(self.storage.step(), input_image_key="image_with_bbox", output_answer_key="second")

    if __name__ == "__main__":
        pipeline = TwoModelSteps(sys.argv[1], sys.argv[2])
        pipeline.run(runner(sys.argv[3]))
        saw = Path(sys.argv[2]) / "st_step2.jsonl.saw"
        print("SAW_STEP2_FILE", [line == "True" for line in saw.read_text().split()])
    """
)
STEP_FILES = ("st_step1.jsonl", "st_step2.jsonl", "st_step3.jsonl")


def start(script: Path, table: Path, cache: Path, mode: str, chunks_in_flight: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(table), str(cache), mode, str(chunks_in_flight)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    return out


def step_bytes(cache: Path) -> dict[str, bytes]:
    marker = json.dumps(str(cache))[1:-1].encode()
    return {name: (cache / name).read_bytes().replace(marker, b"<cache>") for name in STEP_FILES}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=9, size=(96, 72), n_boxes=2)
    script = tmp_path / "two_model_steps.py"
    script.write_text(SCRIPT)
    return script, table


@pytest.mark.parametrize(("mode", "sequential_mode"), [("streaming", "no_streaming"), ("ray", "ray_no_streaming")])
def test_streaming_overlaps_steps_and_writes_the_sequential_files(
    tmp_path: Path, setup: tuple[Path, Path], mode: str, sequential_mode: str
) -> None:
    script, table = setup
    sequential = finish(start(script, table, tmp_path / "sequential", sequential_mode))
    streaming = finish(start(script, table, tmp_path / "streaming", mode))
    # Sequentially, step 3 only starts once step 2's file exists; streaming, it starts on step 2's first chunk.
    assert "SAW_STEP2_FILE [True, True, True, True, True]" in sequential
    assert "SAW_STEP2_FILE [False," in streaming
    assert step_bytes(tmp_path / "streaming") == step_bytes(tmp_path / "sequential")
    for name in STEP_FILES:  # the manifests record the same step (the hashes differ only by the cache path)
        seq = json.loads((tmp_path / "sequential" / f"{name}.manifest.json").read_text())
        got = json.loads((tmp_path / "streaming" / f"{name}.manifest.json").read_text())
        assert (got["fingerprint"], got["operator"]) == (seq["fingerprint"], seq["operator"])
        assert (got["stats"]["rows_in"], got["stats"]["rows_out"]) == (9, 9)
    assert not list((tmp_path / "streaming").glob(".*.parts"))


@pytest.mark.parametrize(
    ("rerun", "chunks_in_flight"), [("streaming", 1), ("no_streaming", 1), ("streaming", 2), ("ray", 1)]
)
def test_sigkill_while_two_steps_stream_then_rerun_equals_a_clean_run(
    tmp_path: Path, setup: tuple[Path, Path], rerun: str, chunks_in_flight: int
) -> None:
    script, table = setup
    finish(start(script, table, tmp_path / "clean", "no_streaming"))
    cache = tmp_path / "killed"
    victim = start(script, table, cache, "streaming", chunks_in_flight)
    deadline = time.monotonic() + 90
    while not list((cache / ".st_step3.jsonl.parts").glob("chunk_*.done.json")):
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (cache / "st_step2.jsonl").exists(), "step 2 was still running when step 3 had a chunk done"

    resumed = start(script, table, cache, rerun, chunks_in_flight)
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert "step 2 PromptedVQAGenerator: resuming after" in err
    assert step_bytes(cache) == step_bytes(tmp_path / "clean")
    summary = json.loads((cache / "st_summary.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] == 9


@pytest.mark.parametrize("script", ["image_region_caption_pipeline", "imgdiff_pipeline"])
def test_both_scripts_stream_unless_told_not_to(script: str) -> None:
    from dataflow_mm.pipeline.script import runner_from_args
    from dataflow_mm.pipeline.templates import load_pipeline_script

    parse_args = load_pipeline_script(script).parse_args
    assert runner_from_args(parse_args([])).streaming is True
    assert runner_from_args(parse_args(["--no_streaming"])).streaming is False
    assert runner_from_args(parse_args(["--runner", "ray"])).streaming is True
    assert runner_from_args(parse_args(["--runner", "ray", "--no_streaming"])).streaming is False


class _Watched:
    """A fake serving that counts how many calls are inside it at once (a model two steps share)."""

    def __init__(self, fail: bool = False) -> None:
        import threading

        from tests.support.fake_serving import FakeVLMServing

        watched = self

        class Serving(FakeVLMServing):
            def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
                with watched.lock:
                    watched.inside += 1
                    watched.most = max(watched.most, watched.inside)
                try:
                    time.sleep(0.05)
                    if fail:
                        from dataflow_mm.common.errors import UserError

                        raise UserError("the backend refused the run")
                    return super()._chat_batch(conversations, sampling)
                finally:
                    with watched.lock:
                        watched.inside -= 1

        self.lock, self.inside, self.most = threading.Lock(), 0, 0
        self.serving = Serving(load_images=False)


def _two_steps_on(serving: object, table: Path, cache: Path):  # type: ignore[no-untyped-def]
    from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator

    class TwoSteps(PipelineABC):
        def __init__(self) -> None:
            self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="sh", chunk_size=1)
            self.first = PromptedVQAGenerator(serving)
            self.second = PromptedVQAGenerator(serving)

        def forward(self) -> None:
            self.first.run(self.storage.step(), input_image_key=None, output_answer_key="a1")
            self.second.run(self.storage.step(), input_prompt_key="a1", input_image_key=None, output_answer_key="a2")

    return TwoSteps()


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    import pandas as pd

    from dataflow_mm.storage.table_writer import write_table

    return write_table(pd.DataFrame({"prompt": [f"q{i}" for i in range(6)]}), tmp_path / "prompts.jsonl")


def test_a_model_two_steps_share_serves_one_step_at_a_time(tmp_path: Path, prompts: Path) -> None:
    watched = _Watched()
    summary = _two_steps_on(watched.serving, prompts, tmp_path / "cache").run()
    assert summary.rows_out == 6 and len(watched.serving.calls) == 12
    assert watched.most == 1


def test_a_failing_step_stops_the_streaming_run_with_its_own_error(tmp_path: Path, prompts: Path) -> None:
    from dataflow_mm.common.errors import UserError

    watched = _Watched(fail=True)
    started = time.monotonic()
    with pytest.raises(UserError, match="the backend refused the run"):
        _two_steps_on(watched.serving, prompts, tmp_path / "cache").run()
    assert time.monotonic() - started < 30  # no step thread is left waiting
    assert not (tmp_path / "cache" / "sh_step1.jsonl").exists()
