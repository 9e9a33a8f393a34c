"""The JSON/JSONL commit path of a step file: today's writer vs the pandas path it replaced.

    .venv/bin/python benchmarks/step_writes.py          # --rows 10000 --chunk_size 512 --repeats 5

A step-like table (id, image path, boxes, normalized floats, caption, provenance) is written in
chunks through ``AtomicTableWriter`` (orjson, streamed) and through the previous code path
(pandas ``to_json`` per chunk; for ``.json`` the held chunks concatenated, serialized by pandas,
re-parsed and re-dumped at commit), which is reproduced here as the reference. Best of N, seconds.
It also counts the floats that come back changed (pandas rounds to 10 decimals).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import pandas as pd

from dataflow_mm.storage.formats import read_table
from dataflow_mm.storage.table_writer import AtomicTableWriter


def step_table(rows: int) -> pd.DataFrame:
    rng = random.Random(0)
    return pd.DataFrame(
        {
            "id": list(range(rows)),
            "image": [f"/data/images/scene_{i:06d}.jpg" for i in range(rows)],
            "bbox": [[[rng.randint(0, 900), rng.randint(0, 700), 40, 30] for _ in range(3)] for _ in range(rows)],
            "normalized_bbox": [[[rng.random() for _ in range(4)] for _ in range(3)] for _ in range(rows)],
            "score": [rng.random() * 1e-6 for _ in range(rows)],
            "caption": [f"<region1>: a red car parked near tree {i}." for i in range(rows)],
            "provenance": [{"step2": "0123456789abcdef"} for _ in range(rows)],
            "error": [None] * rows,
        },
        dtype=object,
    )


def chunks(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [frame.iloc[i : i + size].reset_index(drop=True) for i in range(0, len(frame), size)]


def write_now(parts: list[pd.DataFrame], path: Path) -> None:
    with AtomicTableWriter(path) as writer:
        for part in parts:
            writer.append(part)


def write_before(parts: list[pd.DataFrame], path: Path) -> None:
    """The replaced code path (pandas to_json), for reference."""
    if path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for part in parts:
                handle.write(part.to_json(orient="records", lines=True, force_ascii=False, date_format="iso"))
                handle.write("\n")
        return
    frame = pd.concat(parts, ignore_index=True)
    records = json.loads(frame.to_json(orient="records", force_ascii=False))
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")


def best(fn, parts: list[pd.DataFrame], path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(parts, path)
        times.append(time.perf_counter() - start)
    return min(times)


def changed_floats(path: Path, frame: pd.DataFrame) -> int:
    back = read_table(path).frame
    return sum(a != b for a, b in zip(frame["score"], back["score"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--chunk_size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    frame = step_table(args.rows)
    parts = chunks(frame, args.chunk_size)
    with tempfile.TemporaryDirectory() as folder:
        for suffix in ("json", "jsonl"):
            now, before = Path(folder) / f"now.{suffix}", Path(folder) / f"before.{suffix}"
            t_now = best(write_now, parts, now, args.repeats)
            t_before = best(write_before, parts, before, args.repeats)
            print(
                f"{suffix:5s} {args.rows} rows: now {t_now:.3f} s, before (pandas) {t_before:.3f} s, "
                f"{t_before / t_now:.1f}x; floats changed on the way back: now {changed_floats(now, frame)}, "
                f"before {changed_floats(before, frame)}"
            )


if __name__ == "__main__":
    main()
