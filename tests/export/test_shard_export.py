"""`dataflowmm export --format parquet|webdataset`: shards with the images inside, read back by ``datasets``
(PIL images through the ``Image()`` feature; LLaMA-Factory's documented ShareGPT rules checked) and by the
``webdataset`` library; sharded by count and by size; a re-export replaces the earlier shards."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataflow_mm.cli.main import main as cli_main
from dataflow_mm.common.errors import UserError
from dataflow_mm.export import ShardOptions, export_run
from tests.support.sample_data import write_jsonl

datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")


def region_step(tmp_path: Path, n_rows: int) -> tuple[Path, dict[str, bytes]]:
    """A region-caption step file: ``n_rows`` images with two captioned boxes each, plus one failed row."""
    rows, pictures = [], {}
    for i in range(n_rows):
        path = tmp_path / "imgs" / f"scene{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64 + i, 48), (i * 25 % 255, 100, 50)).save(path)
        pictures[str(i)] = path.read_bytes()
        boxes = [[2, 2, 20, 20], [10, 10, 30, 20]]
        rows.append(
            {"id": i + 1, "image": str(path), "bbox": boxes, "region_captions": ["a cat", "a hat"], "error": None}
        )
    rows.append({"id": n_rows + 1, "image": "gone.jpg", "bbox": [], "region_captions": [], "error": "ServingError: x"})
    return write_jsonl(tmp_path / "rc_step3.jsonl", rows), pictures


def check_llama_factory_sharegpt(record: dict) -> None:
    """LLaMA-Factory's documented ShareGPT rules (data/README.md, its converter and mm plugin): turns alternate
    human/gpt starting with human, an even number of them, and as many ``<image>`` tokens as images."""
    roles = [turn["from"] for turn in record["conversations"]]
    assert len(roles) % 2 == 0 and roles == ["human", "gpt"] * (len(roles) // 2)
    text = "".join(turn["value"] for turn in record["conversations"])
    assert text.count("<image>") == len(record["images"]) >= 1


def test_parquet_shards_by_count_load_as_pil_images_in_llama_factory_layout(tmp_path: Path) -> None:
    step, pictures = region_step(tmp_path, 7)
    out = tmp_path / "out"
    stats = export_run(step, "parquet", out, shard_options=ShardOptions(max_samples=3))
    assert stats.samples == 7 and stats.rows_skipped == {"row_error": 1}
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert shards == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    info = json.loads((out / "dataset_info.json").read_text())["dataflow_mm"]
    assert info == {
        "file_name": "data",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images"},
    }
    # LLaMA-Factory loads a folder file_name as load_dataset(<its files' type>, data_files=<the files>)
    loaded = datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in (out / "data").iterdir()), split="train"
    )
    assert len(loaded) == 7 and isinstance(loaded.features["images"].feature, datasets.Image)
    for record in loaded:
        check_llama_factory_sharegpt(record)
        (image,) = record["images"]
        assert isinstance(image, Image.Image) and image.size == (63 + int(record["id"]), 48)
        assert len(record["conversations"]) == 4  # two regions, one turn each
    raw = pq.read_table(out / "data").column("images").to_pylist()
    assert sorted(images[0]["bytes"] for images in raw) == sorted(pictures.values())  # the files' bytes, as they were
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["format"] == "parquet" and len(summary["files"]) == 4  # 3 shards + dataset_info.json


def test_sharding_by_size_and_a_re_export_replaces_the_earlier_shards(tmp_path: Path) -> None:
    step, pictures = region_step(tmp_path, 5)
    out = tmp_path / "out"
    one_image = max(len(p) for p in pictures.values())
    (out / "data").mkdir(parents=True)
    (out / "data" / ".tmp-000000").write_bytes(b"left by a killed export")
    export_run(step, "parquet", out, shard_options=ShardOptions(max_bytes=one_image + 200))
    assert len(list((out / "data").glob("train-*.parquet"))) == 5  # one sample per shard
    assert not list((out / "data").glob(".tmp-*"))
    with pytest.raises(UserError, match="--overwrite"):  # earlier shards are replaced only when asked (issue 24)
        export_run(step, "parquet", out, shard_options=ShardOptions(max_samples=10))
    export_run(step, "parquet", out, shard_options=ShardOptions(max_samples=10), overwrite=True)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert len(datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")) == 5


def test_webdataset_shards_read_by_the_library_with_two_images_per_sample(tmp_path: Path) -> None:
    for name, color in (("a.jpg", (200, 0, 0)), ("b.png", (0, 0, 200))):
        Image.new("RGB", (80, 60), color).save(tmp_path / name)
    decision = {"index": 0, "bbox_xyxy": [10, 20, 60, 50], "kept": True, "difference_caption": "It turned blue."}
    rows = [
        {"id": f"pair.{i}", "image_path1": str(tmp_path / "a.jpg"), "image_path2": str(tmp_path / "b.png"),
         "error": None, "bbox_decisions": [decision]}
        for i in range(5)
    ]  # fmt: skip
    step = write_jsonl(tmp_path / "imgdiff_step4.jsonl", rows)
    out = tmp_path / "out"
    assert cli_main(["export", str(step), "--format", "webdataset", "--out", str(out), "--max_shard_samples", "2"]) == 0
    names = sorted(p.name for p in (out / "webdataset").iterdir())
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    pattern = str(out / "webdataset" / "shard-{000000..000002}.tar")
    samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(5)]  # unique, dot-free keys
    for index, sample in enumerate(samples):
        record = sample["json"]
        assert record["id"] == f"pair.{index}_box0" and record["images"] == [
            f"{sample['__key__']}.jpg",
            f"{sample['__key__']}.img1.png",
        ]
        check_llama_factory_sharegpt(record)
        assert sample["jpg"].getpixel((5, 5))[0] > 150 and sample["img1.png"].getpixel((5, 5))[2] > 150


def test_shard_limits_must_be_positive(tmp_path: Path, capsys) -> None:
    step, _ = region_step(tmp_path, 1)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", str(step), "--format", "parquet", "--out", str(tmp_path / "o"), "--max_shard_mb", "0"])
    assert exit_info.value.code == 2 and "must be positive" in capsys.readouterr().err
