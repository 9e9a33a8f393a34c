"""How much of a region-caption run is spent outside the serving call.

    .venv/bin/python benchmarks/overhead.py [--rows 2000] [--hf_rows 2000] [--delays 0 0.05]
        [--no_streaming] [--chunk_size 512] [--concurrent_chunks K]

The pipeline of the README (``ImageBboxGenerator`` draws the numbered boxes, ``PromptedVQAGenerator``
asks about them) on a table of ``--rows`` rows, against the fake OpenAI server with no delay and
with ``--delays`` seconds per request (the API backend, 8 requests in flight), and with the
transformers backend on the tiny random-weight Qwen2.5-VL, as a pipeline on the local runner
(steps streaming into each other; ``--no_streaming``: one after another). The serving's ``chat`` is timed;
everything else (reading the table, decoding and drawing, writing step files, building requests)
is the framework's share: ``(wall - serving) / wall``. Targets (issue #15): <= 25% with no delay,
<= 5% at 50 ms per request.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # sibling benchmarks, and the repository root (tests.support)


class Timed:
    """Wraps a serving's ``chat`` to add up the seconds in which at least one call is inside it
    (calls of two chunks in flight at once are counted once, not twice)."""

    def __init__(self, serving: Any) -> None:
        self.seconds = 0.0
        self._inside = 0
        self._since = 0.0
        self._lock = threading.Lock()
        chat = serving.chat

        def timed_chat(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if self._inside == 0:
                    self._since = time.perf_counter()
                self._inside += 1
            try:
                return chat(*args, **kwargs)
            finally:
                with self._lock:
                    self._inside -= 1
                    if self._inside == 0:
                        self.seconds += time.perf_counter() - self._since

        serving.chat = timed_chat


def run_pipeline(table: Path, cache: Path, serving: Any, streaming: bool, chunk_size: int = 512) -> tuple[float, float]:
    """(wall seconds, seconds inside the serving call) of the two-step region-caption pipeline."""
    from dataflow_mm import FileStorage, ImageBboxGenerator, PipelineABC, PromptedVQAGenerator
    from dataflow_mm.engine import LocalRunner

    class RegionCaptions(PipelineABC):
        def __init__(self) -> None:
            self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=chunk_size)
            self.boxes = ImageBboxGenerator()
            self.captions = PromptedVQAGenerator(serving)

        def forward(self) -> None:
            self.boxes.run(self.storage.step())
            self.captions.run(self.storage.step(), input_image_key="image_with_bbox")

    timed = Timed(serving)
    pipeline = RegionCaptions()
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run summary
        pipeline.run(LocalRunner(streaming=streaming))
    return time.perf_counter() - started, timed.seconds


def report(label: str, rows: int, wall: float, inside: float) -> None:
    outside = wall - inside
    print(f"{label:<34} {rows:>6} rows  wall {wall:7.2f} s  serving {inside:7.2f} s  "
          f"outside {outside:6.2f} s = {100 * outside / wall:5.1f}% of wall")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--hf_rows", type=int, default=2000, help="0 skips the transformers backend")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.05])
    parser.add_argument("--no_streaming", action="store_true", help="run the steps one after another")
    parser.add_argument("--chunk_size", type=int, default=512)
    parser.add_argument(
        "--concurrent_chunks", type=int, default=None, help="API chunks in flight at once (1: one chunk at a time)"
    )
    args = parser.parse_args()

    from scale import make_table

    from dataflow_mm.common.logger import get_logger
    from dataflow_mm.serving.api_serving import APIVLMServing_openai
    from tests.support.openai_test_server import OpenAITestServer

    get_logger().setLevel("WARNING")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        table = make_table(workdir, args.rows)
        for delay in args.delays:
            with OpenAITestServer(delay=delay) as server:
                serving = APIVLMServing_openai(server.base_url, "test-model", api_key_env=None, max_workers=8)
                if args.concurrent_chunks is not None:
                    serving.concurrent_chunks = args.concurrent_chunks
                wall, inside = run_pipeline(
                    table, workdir / f"api_{delay}", serving, not args.no_streaming, args.chunk_size
                )
                serving.cleanup()
            report(f"api, fake server {delay * 1000:.0f} ms/request", args.rows, wall, inside)
        if args.hf_rows:
            from dataflow_mm.models.tiny import tiny_model_path
            from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf

            (workdir / "hf").mkdir()
            hf_table = make_table(workdir / "hf", args.hf_rows) if args.hf_rows != args.rows else table
            serving = LocalModelVLMServing_hf(
                str(tiny_model_path("qwen2_5_vl")), device="cpu", batch_size=8, temperature=0.0, max_tokens=8
            )
            serving.load()
            wall, inside = run_pipeline(hf_table, workdir / "hf_cache", serving, not args.no_streaming, args.chunk_size)
            serving.cleanup()
            report("hf, tiny Qwen2.5-VL (random weights)", args.hf_rows, wall, inside)


if __name__ == "__main__":
    main()
