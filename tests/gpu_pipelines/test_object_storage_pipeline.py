"""The region-caption script end to end on an ``s3://`` glob of Parquet shards (a real S3-protocol server on
loopback) through the fake OpenAI-compatible API, then exported as Parquet and WebDataset shards that
``datasets`` and ``webdataset`` read back; an object-store cache path is refused (exit 2, one line)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataflow_mm.cli.main import main as cli_main
from tests.support.openai_test_server import OpenAITestServer
from tests.support.s3_server import LocalS3, local_s3
from tests.support.sample_data import scene_with_boxes
from tests.support.user_inputs import image_bytes

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3]:
    with local_s3() as server:
        yield server


def upload_shards(s3: LocalS3, bucket: str) -> list[bytes]:
    """Two shards: image cells as s3:// URLs in the first, as datasets Image structs (bytes) in the second."""
    fs = s3.fs()
    s3.make_bucket(bucket)
    pictures, boxes = [], []
    for i in range(6):
        image, bbox = scene_with_boxes((160, 120), 2, seed=i)
        pictures.append(image_bytes(image))
        boxes.append(bbox)
    for i in range(3):
        fs.pipe(f"{bucket}/images/scene{i}.jpg", pictures[i])
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    shards = [
        pa.table(
            {"id": [0, 1, 2], "image": [f"s3://{bucket}/images/scene{i}.jpg" for i in range(3)], "bbox": boxes[:3]}
        ),
        pa.table(
            {
                "id": [3, 4, 5],
                "image": pa.array([{"bytes": pictures[i], "path": f"scene{i}.jpg"} for i in (3, 4, 5)], type=struct),
                "bbox": boxes[3:],
            }
        ),
    ]
    for index, table in enumerate(shards):
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        fs.pipe(f"{bucket}/table/part-{index:05d}.parquet", buffer.getvalue())
    return pictures


def run_script(server: OpenAITestServer, first_entry: str, cache: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, str(SCRIPT),
        "--backend", "api", "--api_url", server.base_url, "--model_name", "test-model",
        "--structured_answer", "json",
        "--first_entry_file", first_entry,
        "--cache_path", cache,
        "--file_name_prefix", "rc",
        "--output_image_with_bbox_path", "",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_region_captions_from_s3_shards_then_training_shards_out(s3: LocalS3, tmp_path: Path) -> None:
    pictures = upload_shards(s3, "e2e")
    cache = tmp_path / "cache"
    with OpenAITestServer() as server:
        proc = run_script(server, "s3://e2e/table/part-*.parquet", str(cache))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(server.requests) == 6
        again = run_script(server, "s3://e2e/table/part-*.parquet", str(cache))  # the same command: resumed
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(server.requests) == 6  # nothing asked twice
    rows = [json.loads(line) for line in (cache / "rc_step3.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(6)) and all(r["error"] is None for r in rows)
    assert all(len(r["region_captions"]) == 2 for r in rows)
    media = sorted((cache / "media").glob("scene*.jpg"))
    assert sorted(p.read_bytes() for p in media) == sorted(pictures)  # each image fetched or stored once
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in "".join(
        p.read_text(errors="replace") for p in cache.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")
    )

    out = tmp_path / "train"
    assert cli_main(["export", str(cache), "--format", "parquet", "--out", str(out), "--max_shard_samples", "4"]) == 0
    shards = sorted((out / "data").glob("*.parquet"))
    assert [p.name for p in shards] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(loaded) == 6
    first = loaded[0]
    assert first["images"][0].size == (160, 120)  # a PIL image, decoded by datasets' Image feature
    assert first["conversations"][0]["value"].count("<image>") == len(first["images"]) == 1

    wds_out = tmp_path / "wds"
    assert cli_main(["export", str(cache), "--format", "webdataset", "--out", str(wds_out)]) == 0
    samples = list(wds.WebDataset(str(wds_out / "webdataset" / "shard-{000000..000000}.tar"), shardshuffle=False))
    assert len(samples) == 6 and all(set(s) >= {"__key__", "json", "jpg"} for s in samples)
    assert sorted(s["jpg"] for s in samples) == sorted(pictures)


def test_an_object_store_cache_path_is_exit_2_in_one_line(s3: LocalS3, tmp_path: Path) -> None:
    with OpenAITestServer() as server:
        proc = run_script(server, str(tmp_path / "none.jsonl"), "s3://e2e/cache")
        assert server.requests == []
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "cache_path 's3://e2e/cache' is object storage" in line
