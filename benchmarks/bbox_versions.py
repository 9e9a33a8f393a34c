"""The box step of several checkouts against the DataFlow-MM-style anchor, in one run, alternating.

    .venv/bin/python benchmarks/bbox_versions.py --version old=/path/to/old/checkout --version new=. \\
        [--images 200] [--repeats 3] [--workers default|1] [--dataflow-mm /path/to/DataFlow-MM]

Each checkout's ``ImageBboxGenerator`` runs the whole step (read, decode, draw, encode, name, durable
write, commit) in its own subprocess (``PYTHONPATH`` = that checkout) on the same 200 photo-like
1024x768 JPEGs with 5 boxes each (``bbox_stage.photo_like_table``), into a fresh cache each time;
the anchor runs in this process: with ``--dataflow-mm``, DataFlow-MM's own ``vp_normalize`` and
``paint_text_box`` from that checkout (OpenCV) in its ``run`` loop (``bbox_anchor.run_dataflow_mm``),
else ``bbox_anchor.run_anchor_like``. The arms alternate
(old, new, anchor, old, new, anchor, ...) so a change of machine load hits each alike. Printed: each
arm's best and median seconds and its speed relative to the anchor (anchor seconds / arm seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STEP = """
import sys, time
from dataflow_mm import ExistingBBoxDataGenConfig, FileStorage, ImageBboxGenerator
table, cache, workers, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
storage = FileStorage(table, cache_path=cache, file_name_prefix="bench", chunk_size=chunk)
workers = None if workers == "default" else int(workers)
generator = ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=10, num_workers=workers))
started = time.perf_counter()
generator.run(storage.step())
print("SECONDS", time.perf_counter() - started)
"""


def run_version(root: Path, table: Path, cache: Path, workers: str, chunk: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", STEP, str(table), str(cache), workers, str(chunk)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("SECONDS")][-1]
    return float(line.split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="append", required=True, help="NAME=CHECKOUT (repeatable)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="default")
    parser.add_argument("--chunk_size", type=int, default=512)
    parser.add_argument("--dataflow-mm", dest="dataflow_mm", default=None, help="a DataFlow-MM checkout: its functions")
    args = parser.parse_args()
    from bbox_anchor import LIBRARY, dataflow_mm_functions, run_anchor_like, run_dataflow_mm

    if args.dataflow_mm:
        functions = dataflow_mm_functions(Path(args.dataflow_mm))

        def anchor(rows: list, cache: Path) -> None:
            run_dataflow_mm(rows, cache, functions)

        anchor_name = f"DataFlow-MM's own functions ({args.dataflow_mm})"
    else:
        anchor, anchor_name = run_anchor_like, f"anchor-like ({LIBRARY})"
    from bbox_stage import photo_like_table

    versions = {name: Path(path).resolve() for name, path in (v.split("=", 1) for v in args.version)}
    seconds: dict[str, list[float]] = {name: [] for name in [*versions, "anchor"]}
    with tempfile.TemporaryDirectory(prefix="bbox_versions_") as tmp:
        table, rows = photo_like_table(Path(tmp) / "photos", args.images)
        for attempt in range(args.repeats):
            for name, root in versions.items():
                cache = Path(tmp) / f"{name}_{attempt}"
                seconds[name].append(run_version(root, table, cache, args.workers, args.chunk_size))
            started = time.perf_counter()
            anchor(rows, Path(tmp) / f"anchor_{attempt}")
            seconds["anchor"].append(time.perf_counter() - started)
            print(attempt, {k: round(v[-1], 3) for k, v in seconds.items()}, file=sys.stderr, flush=True)
    anchor = statistics.median(seconds["anchor"])
    anchor_best = min(seconds["anchor"])
    result = {
        "images": args.images,
        "workers": args.workers,
        "chunk_size": args.chunk_size,
        "anchor": anchor_name,
        "load": os.getloadavg(),
        "arms": {
            name: {
                "best_s": round(min(values), 3),
                "median_s": round(statistics.median(values), 3),
                "x_anchor_best": round(anchor_best / min(values), 2),
                "x_anchor_median": round(anchor / statistics.median(values), 2),
                "runs": [round(v, 3) for v in values],
            }
            for name, values in seconds.items()
        },
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
