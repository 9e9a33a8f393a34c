"""ImageBboxGenerator throughput: images/s on generated 1024x768 JPEGs with 5 boxes each.

    .venv/bin/python benchmarks/bbox_stage.py [--images 200] [--repeats 3]
    .venv/bin/python benchmarks/bbox_stage.py --anchor-like [--images 200] [--repeats 3]

Each measurement runs the whole step (read table, decode, draw, encode, content-name, atomic
write, manifest) into a fresh cache, so nothing is skipped; the best of ``--repeats`` is kept.
It measures the default thread pool and a single worker in the same run.

``--anchor-like`` compares with the anchor: 200 photo-like 1024x768 JPEGs (random texture, about
700 KB each) and 200 small flat images, 5 boxes each; the step with its default workers and with
one worker against a single-threaded, decode-twice baseline written the way DataFlow-MM's operator
does it (``bbox_anchor.py``), all measured in this run, the arms interleaved; our step uses the
storage's default chunk size.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from dataflow_mm import ExistingBBoxDataGenConfig, FileStorage, ImageBboxGenerator
from dataflow_mm.storage.file_storage import DEFAULT_CHUNK_SIZE
from tests.support.sample_data import write_region_caption_table


def run_step(table: Path, cache: Path, workers: int | None, chunk_size: int) -> float:
    """Seconds of one full step into the fresh cache ``cache``."""
    storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="bench", chunk_size=chunk_size)
    generator = ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=10, num_workers=workers))
    started = time.perf_counter()
    generator.run(storage.step())
    return time.perf_counter() - started


def measure(table: Path, workdir: Path, workers: int | None, repeats: int, chunk_size: int = 64) -> float:
    """Best wall time of the full step over ``repeats`` runs into fresh caches."""
    return min(run_step(table, workdir / f"cache_{workers}_{i}", workers, chunk_size) for i in range(repeats))


def photo_like_table(folder: Path, count: int) -> tuple[Path, list[dict]]:
    """``count`` 1024x768 JPEGs of random texture (about 700 KB each), 5 xywh boxes per row."""
    import numpy as np
    from PIL import Image

    from tests.support.sample_data import write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).resize((1024, 768))
        noise = rng.integers(-100, 100, (768, 1024, 3), dtype=np.int16)
        pixels = np.clip(np.asarray(coarse, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo_{index:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=92)
        boxes = [[int(x), int(y), int(w), int(h)] for x, y, w, h in rng.integers(20, 300, (5, 4))]
        rows.append({"id": index, "image": str(path), "bbox": boxes})
    return write_jsonl(folder / "table.jsonl", rows), rows


def flat_table(folder: Path, count: int) -> tuple[Path, list[dict]]:
    """``count`` small flat-colour 160x120 JPEGs with a few shapes, 5 xywh boxes per row."""
    from tests.support.sample_data import scene_with_boxes, write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        image, boxes = scene_with_boxes((160, 120), 5, seed=index)
        path = folder / f"flat_{index:04d}.jpg"
        image.save(path, quality=90)
        rows.append({"id": index, "image": str(path), "bbox": boxes})
    return write_jsonl(folder / "table.jsonl", rows), rows


def anchor_like(images: int, repeats: int) -> None:
    from bbox_anchor import LIBRARY, run_anchor_like

    default_workers = min(4, os.cpu_count() or 1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    print(f"best of {repeats}, arms interleaved; baseline: one row at a time, decode twice, {LIBRARY}")
    print(f"our step: the storage's default chunk size ({DEFAULT_CHUNK_SIZE} rows)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for kind, make in (("photo-like 1024x768", photo_like_table), ("small flat 160x120", flat_table)):
            name = kind.split()[0]
            table, rows = make(workdir / name, images)
            size_kb = sum(Path(r["image"]).stat().st_size for r in rows) / len(rows) / 1024
            best = {"pooled": float("inf"), "single": float("inf"), "anchor": float("inf")}
            for attempt in range(repeats):  # interleaved, so a change of load hits every arm alike
                for arm, workers in (("pooled", None), ("single", 1)):
                    cache = workdir / f"{name}_{arm}_{attempt}"
                    best[arm] = min(best[arm], run_step(table, cache, workers, DEFAULT_CHUNK_SIZE))
                started = time.perf_counter()
                run_anchor_like(rows, workdir / f"{name}_anchor_{attempt}")
                best["anchor"] = min(best["anchor"], time.perf_counter() - started)
            pooled, single, anchor = best["pooled"], best["single"], best["anchor"]
            print(f"{images} {kind} JPEGs ({size_kb:.0f} KB), 5 boxes each:")
            print(
                f"  default workers ({default_workers}): {images / pooled:7.1f} images/s  {anchor / pooled:.2f}x anchor"
            )
            print(f"  one worker:          {images / single:7.1f} images/s  {anchor / single:.2f}x anchor")
            print(f"  anchor-like:         {images / anchor:7.1f} images/s")
    print(f"load after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=None, help="best of this many (3)")
    parser.add_argument("--anchor-like", action="store_true", help="compare with a DataFlow-MM-style baseline")
    args = parser.parse_args()
    if args.anchor_like:
        anchor_like(args.images, args.repeats or 3)
        return
    args.repeats = args.repeats or 3
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
