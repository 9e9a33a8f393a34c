"""The Ray runner against the local runner on the region-caption pipeline (200 rows, chunks of 64).

    .venv/bin/python benchmarks/ray_runner.py [--rows 200] [--chunk_size 64] [--row_seconds 0.02] [--repeats 3]

The serving spends ``row_seconds`` per row while releasing the GIL (a stand-in for a GPU) and still
decodes each image. Ray is started before the timed runs and shut down after them, so the Ray
numbers exclude ``ray.init``/shutdown (printed apart); each run writes a fresh cache. The first Ray
run also starts Ray's worker processes (printed apart); the ratio is taken on the median of the
repeats of each runner. Target (issue #14): Ray wall <= 2x the local runner's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from dataflow_mm.pipeline.templates import load_pipeline_script
from dataflow_mm.serving.base import Completion, Conversation, SamplingParams
from tests.support.fake_serving import FakeVLMServing


class TimedServing(FakeVLMServing):
    """The fake serving, spending ``row_seconds`` per request in ``time.sleep`` (the GIL is free meanwhile)."""

    def __init__(self, row_seconds: float) -> None:
        super().__init__()
        self.row_seconds = row_seconds

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        time.sleep(self.row_seconds * len(conversations))
        return super()._chat_batch(conversations, sampling)


def run_once(table: Path, cache: Path, chunk_size: int, row_seconds: float, runner: object) -> float:
    script = load_pipeline_script("image_region_caption_pipeline", "image_region_caption_pipeline_bench")
    pipeline = script.ImageRegionCaptionPipeline(
        TimedServing(row_seconds),
        first_entry_file=str(table),
        cache_path=str(cache),
        chunk_size=chunk_size,
        output_image_with_bbox_path=str(cache / "with_bbox.jsonl"),
    )
    started = time.perf_counter()
    summary = pipeline.run(runner=runner)
    seconds = time.perf_counter() - started
    assert summary.rows_out == len(table.read_text().splitlines()), summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--row_seconds", type=float, default=0.02)
    parser.add_argument("--num_cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    from dataflow_mm.engine.ray_runner import RayRunner
    from tests.support.sample_data import write_region_caption_table

    with tempfile.TemporaryDirectory(prefix="ray_bench_") as tmp:
        root = Path(tmp)
        table = write_region_caption_table(root / "imgs", n_rows=args.rows, size=(320, 240), n_boxes=3)
        local = [
            run_once(table, root / f"local{i}", args.chunk_size, args.row_seconds, "local") for i in range(args.repeats)
        ]
        started = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        init_seconds = time.perf_counter() - started
        try:
            ray_runs = [
                run_once(table, root / f"ray{i}", args.chunk_size, args.row_seconds, RayRunner())
                for i in range(args.repeats + 1)
            ]
        finally:
            started = time.perf_counter()
            ray.shutdown()
            shutdown_seconds = time.perf_counter() - started
    local_median, ray_median = statistics.median(local), statistics.median(ray_runs[1:])
    result = {
        "rows": args.rows,
        "chunk_size": args.chunk_size,
        "row_seconds": args.row_seconds,
        "local_s": [round(x, 2) for x in local],
        "ray_first_s": round(ray_runs[0], 2),
        "ray_s": [round(x, 2) for x in ray_runs[1:]],
        "ray_init_s": round(init_seconds, 2),
        "ray_shutdown_s": round(shutdown_seconds, 2),
        "ray_over_local_median": round(ray_median / local_median, 2),
        "ray_first_over_local_median": round(ray_runs[0] / local_median, 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
