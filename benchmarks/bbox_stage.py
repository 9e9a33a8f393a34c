"""ImageBboxGenerator throughput: images/s on generated 1024x768 JPEGs with 5 boxes each.

    .venv/bin/python benchmarks/bbox_stage.py [--images 200] [--repeats 3]

Each measurement runs the whole step (read table, decode, draw, encode, content-name, atomic
write, manifest) into a fresh cache, so nothing is skipped; the best of ``--repeats`` is kept.
It measures the default thread pool and a single worker in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from dataflow_mm import ExistingBBoxDataGenConfig, FileStorage, ImageBboxGenerator
from dataflow_mm.testing.sample_data import write_region_caption_table


def measure(table: Path, workdir: Path, workers: int | None, repeats: int) -> float:
    """Best wall time of the full step over ``repeats`` runs into fresh caches."""
    best = float("inf")
    for attempt in range(repeats):
        cache = workdir / f"cache_{workers}_{attempt}"
        storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="bench", chunk_size=64)
        generator = ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=10, num_workers=workers))
        started = time.perf_counter()
        generator.run(storage.step())
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        table = write_region_caption_table(workdir / "images", args.images, size=(1024, 768), n_boxes=5)
        default_workers = min(4, os.cpu_count() or 1)
        pooled = measure(table, workdir, None, args.repeats)
        single = measure(table, workdir, 1, args.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{args.images} images 1024x768, 5 boxes each, best of {args.repeats}")
    print(f"thread pool ({default_workers} workers): {pooled:.2f} s  -> {args.images / pooled:.1f} images/s")
    print(f"one worker:                  {single:.2f} s  -> {args.images / single:.1f} images/s")
    print(f"speed-up of the pool: {single / pooled:.2f}x")


if __name__ == "__main__":
    main()
