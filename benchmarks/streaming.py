"""Streaming between steps: wall time of the region-caption pipeline, sequential vs streaming.

    .venv/bin/python benchmarks/streaming.py [--rows 2000] [--chunk_size 64] [--row_seconds auto] [--box_workers N]

Step 1 draws the boxes (ImageBboxGenerator, CPU); step 2 captions them with a serving that spends a
fixed time per row while releasing the GIL (``time.sleep``: a stand-in for a GPU). With
``--row_seconds auto`` the per-row time is set from a calibration run (sleep 0) so that T2 ~ T1. Reported: T1
and T2 (each step alone, from the sequential run), the sequential wall time and the streaming wall
time, each on a fresh cache. Target (issue #14): streaming wall <= 1.15 x max(T1, T2).

``--box_workers``: the box step's threads (default: the operator's, min(4, CPUs)). On a 2-core
machine the default box step already keeps both cores busy, so streaming cannot hide step 2's own
CPU work behind it; ``--box_workers 1`` leaves step 2 a core, as a GPU machine's spare cores would.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # sibling benchmarks, and the repository root (tests.support)

from scale import make_table  # noqa: E402 - a sibling benchmark, found through the path above


def pipeline_class(chunk_size: int, row_seconds: float, box_workers: int | None = None) -> Any:
    """The region-caption pipeline whose serving sleeps ``row_seconds`` per row."""
    from dataflow_mm import (
        ExistingBBoxDataGenConfig,
        FileStorage,
        ImageBboxGenerator,
        PipelineABC,
        PromptedVQAGenerator,
    )
    from tests.support.fake_serving import FakeVLMServing

    class TimedServing(FakeVLMServing):
        def _chat_batch(self, conversations: Any, sampling: Any) -> Any:
            time.sleep(row_seconds * len(conversations))  # the GPU's time: the GIL is free meanwhile
            return super()._chat_batch(conversations, sampling)

    class RegionCaptions(PipelineABC):
        def __init__(self, table: Path, cache: Path) -> None:
            self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=chunk_size)
            self.boxes = ImageBboxGenerator(config=ExistingBBoxDataGenConfig(num_workers=box_workers))
            self.vqa = PromptedVQAGenerator(TimedServing(load_images=False))  # the GPU stand-in: no CPU work

        def forward(self) -> None:
            self.boxes.run(self.storage.step())
            self.vqa.run(self.storage.step(), input_image_key="image_with_bbox")

    return RegionCaptions


def timed_run(
    table: Path, cache: Path, chunk_size: int, row_seconds: float, streaming: bool, box_workers: int | None
) -> Any:
    from dataflow_mm.engine import LocalRunner

    pipeline = pipeline_class(chunk_size, row_seconds, box_workers)(table, cache)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = pipeline.run(LocalRunner(streaming=streaming))
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--row_seconds", default="auto", help="serving seconds per row, or 'auto' (T2 ~ T1)")
    parser.add_argument("--box_workers", type=int, default=None, help="the box step's threads (default: its own)")
    args = parser.parse_args()
    from dataflow_mm.common.logger import get_logger

    get_logger().setLevel("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = make_table(folder, args.rows)
        if args.row_seconds == "auto":  # the serving's own work (images, prompts) counts into T2 too
            _, calibration = timed_run(table, folder / "calibrate", args.chunk_size, 0.0, False, args.box_workers)
            boxes_alone, captions_overhead = (step.seconds for step in calibration.steps)
            row_seconds = max(boxes_alone - captions_overhead, 0.0) / args.rows
        else:
            row_seconds = float(args.row_seconds)
        sequential, summary = timed_run(
            table, folder / "sequential", args.chunk_size, row_seconds, False, args.box_workers
        )
        t1, t2 = (step.seconds for step in summary.steps)
        streaming, streamed = timed_run(
            table, folder / "streaming", args.chunk_size, row_seconds, True, args.box_workers
        )
        same = all(
            (folder / "sequential" / name).read_bytes().replace(b"sequential", b"X")
            == (folder / "streaming" / name).read_bytes().replace(b"streaming", b"X")
            for name in ("rc_step1.jsonl", "rc_step2.jsonl")
        )
    assert streamed.rows_out == args.rows
    workers = args.box_workers or "default"
    print(
        f"rows {args.rows}, chunk {args.chunk_size}, serving {1000 * row_seconds:.2f} ms/row (sleep, GIL free), "
        f"box workers {workers}"
    )
    print(f"T1 (boxes alone)    {t1:7.2f} s")
    print(f"T2 (captions alone) {t2:7.2f} s")
    print(f"sequential wall     {sequential:7.2f} s")
    print(f"streaming wall      {streaming:7.2f} s  = {streaming / max(t1, t2):.2f} x max(T1, T2) (target <= 1.15)")
    print(f"step files byte-identical: {same}")


if __name__ == "__main__":
    main()
