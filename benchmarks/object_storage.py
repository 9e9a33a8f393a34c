"""Object storage: the region-caption script on Parquet shards in a local S3 server vs one shard vs local disk.

    .venv/bin/python benchmarks/object_storage.py [--rows 20000] [--shards 20] [--distinct_images 64]

A table of ``--rows`` rows (a Hugging Face ``Image`` struct of JPEG bytes, 160x120, drawn from
``--distinct_images`` scenes, and two boxes) is written as ``--shards`` Parquet shards to a moto S3
server on loopback, and once more as one shard. The region-caption script (``--backend api``, the fake
OpenAI-compatible server in this process, ``--structured_answer json``) runs, each in a fresh cache and
its own process, on:

  A. one shard holding one shard's rows (``rows / shards``), on S3;
  B. one shard holding all rows, on S3;
  C. the ``--shards`` shards (all rows) on S3, by glob;
  D. the same shards on local disk, by glob.

Reported: each run's wall time and peak RSS (``wait4``'s ``ru_maxrss`` of that process), the memory
ratios C/A and C/B (target <= 1.3x: memory stays flat however many shards) and the wall ratio C/D.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"


def make_tables(rows: int, shards: int, distinct: int) -> list:
    """``shards`` Arrow tables of ``rows`` rows in all (ids in order)."""
    import pyarrow as pa

    from tests.support.sample_data import scene_with_boxes
    from tests.support.user_inputs import image_bytes

    scenes = []
    for seed in range(distinct):
        image, boxes = scene_with_boxes((160, 120), 2, seed=seed)
        scenes.append((image_bytes(image), boxes))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    per_shard = rows // shards
    tables = []
    for shard in range(shards):
        ids = list(range(shard * per_shard, (shard + 1) * per_shard if shard < shards - 1 else rows))
        images = [{"bytes": scenes[i % distinct][0], "path": f"scene{i % distinct}.jpg"} for i in ids]
        boxes = [scenes[i % distinct][1] for i in ids]
        tables.append(pa.table({"id": ids, "image": pa.array(images, type=struct), "bbox": boxes}))
    return tables


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=256)
    return buffer.getvalue()


def run(server_url: str, first_entry: str, cache: Path, max_workers: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one script run in its own process."""
    cmd = [
        sys.executable, str(SCRIPT),
        "--backend", "api", "--api_url", server_url, "--model_name", "bench",
        "--structured_answer", "json", "--max_workers", str(max_workers),
        "--first_entry_file", first_entry, "--cache_path", str(cache), "--file_name_prefix", "rc",
        "--output_image_with_bbox_path", "",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"run on {first_entry} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--distinct_images", type=int, default=64)
    parser.add_argument("--max_workers", type=int, default=8, help="the API backend's concurrent requests")
    args = parser.parse_args()

    from tests.support.openai_test_server import OpenAITestServer
    from tests.support.s3_server import local_s3

    tables = make_tables(args.rows, args.shards, args.distinct_images)
    import pyarrow as pa

    with tempfile.TemporaryDirectory() as tmp, local_s3() as s3, OpenAITestServer(window=64) as api:
        folder = Path(tmp)
        fs = s3.fs()
        s3.make_bucket("bench")
        (folder / "local").mkdir()
        for index, table in enumerate(tables):
            data = parquet_bytes(table)
            fs.pipe(f"bench/shards/part-{index:05d}.parquet", data)
            (folder / "local" / f"part-{index:05d}.parquet").write_bytes(data)
        fs.pipe("bench/one/small.parquet", parquet_bytes(tables[0]))
        fs.pipe("bench/one/all.parquet", parquet_bytes(pa.concat_tables(tables)))
        arms = {
            "A one shard of rows/shards (S3)": "s3://bench/one/small.parquet",
            "B one shard of all rows (S3)": "s3://bench/one/all.parquet",
            f"C {args.shards} shards (S3, glob)": "s3://bench/shards/part-*.parquet",
            f"D {args.shards} shards (local disk, glob)": str(folder / "local" / "part-*.parquet"),
        }
        results = {}
        for name, source in arms.items():
            results[name] = run(api.base_url, source, folder / f"cache{len(results)}", args.max_workers)
            print(f"{name:<40} wall {results[name][0]:7.1f} s   peak RSS {results[name][1]:7.1f} MiB", flush=True)
    (_, a), (_, b), (c_wall, c), (d_wall, _) = results.values()
    print(
        f"rows {args.rows}, shards {args.shards}, chunk 512, distinct images {args.distinct_images}, "
        f"API workers {args.max_workers}\n"
        f"peak memory C/A (all shards vs one shard's rows): {c / a:.2f}x   C/B (vs one big shard): {c / b:.2f}x\n"
        f"wall time C/D (S3 vs local disk): {c_wall / d_wall:.2f}x"
    )


if __name__ == "__main__":
    main()
