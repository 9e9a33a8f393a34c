"""Chunked streaming at scale: peak memory and rows/s of the region-caption pipeline at 1k and 10k rows.

    .venv/bin/python benchmarks/scale.py [--sizes 1000 10000] [--chunk_size 512] [--window 512]

Each size runs in its own fresh process (so its peak RSS is its own), with a fast fake serving
that still decodes every image, through both steps (boxes drawn and written, prompts answered).
Rows reuse a pool of 20 small images with different boxes, so every row draws a distinct output.
The fake serving (a test helper) keeps only its last ``--window`` requests, so the numbers measure
the framework, not the helper's log.
Targets (issue): peak RSS at 10k <= 1.3x that at 1k; rows/s at 10k >= 0.8x that at 1k.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

POOL = 20


def make_table(folder: Path, rows: int) -> Path:
    from tests.support.sample_data import scene_with_boxes, write_jsonl

    images = []
    for index in range(POOL):
        image, _ = scene_with_boxes((160, 120), 3, seed=index)
        path = folder / f"pool_{index}.jpg"
        image.save(path, quality=85)
        images.append(str(path))

    def row(i: int) -> dict:
        x, y = i % 97, (i // 97) % 61
        return {"id": i, "image": images[i % POOL], "bbox": [[x, y, 30 + i % 29, 20 + i % 37], [5, 5, 40, 30]]}

    return write_jsonl(folder / f"table_{rows}.jsonl", (row(i) for i in range(rows)))


def worker(rows: int, chunk_size: int, window: int = 512) -> dict:
    """Build the table, run the pipeline, report rows/s and this process's peak RSS."""
    from dataflow_mm import FileStorage, ImageBboxGenerator, PipelineABC, PromptedVQAGenerator
    from dataflow_mm.common.logger import get_logger
    from tests.support.fake_serving import FakeVLMServing

    get_logger().setLevel("WARNING")

    class RegionCaptions(PipelineABC):
        def __init__(self, table: Path, cache: Path) -> None:
            self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=chunk_size)
            self.boxes = ImageBboxGenerator()
            self.vqa = PromptedVQAGenerator(FakeVLMServing(window=window))  # it keeps only recent requests

        def forward(self) -> None:
            self.boxes.run(self.storage.step())
            self.vqa.run(self.storage.step(), input_image_key="image_with_bbox")

    with tempfile.TemporaryDirectory() as tmp:
        table = make_table(Path(tmp), rows)
        pipeline = RegionCaptions(table, Path(tmp) / "cache")
        started = time.perf_counter()
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            summary = pipeline.run()
        seconds = time.perf_counter() - started
        assert summary.rows_out == rows and summary.rows_with_error == 0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mib": peak_kib / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--chunk_size", type=int, default=512)
    parser.add_argument("--window", type=int, default=512, help="requests the fake serving keeps (test helper)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.chunk_size, args.window)))
        return
    results = []
    for size in args.sizes:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                str(size),
                "--chunk_size",
                str(args.chunk_size),
                "--window",
                str(args.window),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"chunk_size={args.chunk_size}, fake serving, two steps (boxes + VQA)")
    print(f"{'rows':>7} {'seconds':>8} {'rows/s':>8} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{r['rows']:>7} {r['seconds']:>8.2f} {r['rows_per_s']:>8.1f} {r['peak_rss_mib']:>13.1f}")
    small, large = results[0], results[-1]
    memory_ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    speed_ratio = large["rows_per_s"] / small["rows_per_s"]
    print(f"peak RSS {large['rows']} / {small['rows']}: {memory_ratio:.2f}x (target <= 1.3x)")
    print(f"rows/s   {large['rows']} / {small['rows']}: {speed_ratio:.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
