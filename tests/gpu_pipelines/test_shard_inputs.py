"""The region-caption pipeline on inputs made of shards: a local glob of JSONL shards (relative image paths,
a malformed line), a JSONL table over http:// (fsspec), and the split of a DatasetDict folder chosen with
``split`` (the scripts' ``--split``); resumed runs find the same input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflow_mm.pipeline.templates import load_pipeline_script
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import scene_with_boxes
from tests.support.user_inputs import image_bytes, image_http_server

pytest.importorskip("aiohttp")  # fsspec's http:// filesystem
datasets = pytest.importorskip("datasets")


def region_pipeline(serving: FakeVLMServing, source: str, cache: Path, **kwargs):
    script = load_pipeline_script("image_region_caption_pipeline")
    return script.ImageRegionCaptionPipeline(
        serving, first_entry_file=source, cache_path=str(cache), output_image_with_bbox_path=None, **kwargs
    )


def step2(cache: Path) -> list[dict]:
    return [json.loads(x) for x in (cache / "region_caption_step2.jsonl").read_text().splitlines()]


def test_a_local_glob_of_jsonl_shards_with_relative_images_and_a_bad_line(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    (shards / "imgs").mkdir(parents=True)
    lines = []
    for i in range(5):
        image, boxes = scene_with_boxes((96, 72), 2, seed=i)
        image.save(shards / "imgs" / f"s{i}.jpg")
        lines.append(json.dumps({"id": i + 1, "image": f"imgs/s{i}.jpg", "bbox": boxes}))
    (shards / "part-0.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (shards / "part-1.jsonl").write_text(lines[3] + "\n{not json\n" + lines[4] + "\n")
    cache = tmp_path / "cache"
    serving = FakeVLMServing()
    summary = region_pipeline(serving, str(shards / "part-*.jsonl"), cache, chunk_size=2).run()
    rows = step2(cache)
    assert summary.rows_out == 5 and [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["error"] is None for r in rows)  # relative paths found beside the shards
    (reject,) = [json.loads(x) for x in (cache / "region_caption_step1.jsonl.rejects.jsonl").read_text().splitlines()]
    assert reject["cause"] == "MalformedJSONLine" and "part-1.jsonl: line 2" in reject["message"]
    calls = serving.calls.total
    region_pipeline(serving, str(shards / "part-*.jsonl"), cache, chunk_size=2).run()  # resumed: nothing redone
    assert serving.calls.total == calls


def test_a_jsonl_table_over_http(tmp_path: Path) -> None:
    pictures = [scene_with_boxes((96, 72), 2, seed=i) for i in range(2)]
    routes = {f"/img{i}.jpg": image_bytes(image) for i, (image, _) in enumerate(pictures)}
    with image_http_server(routes) as (base, hits):
        table = "".join(
            json.dumps({"image": f"{base}/img{i}.jpg", "bbox": boxes}) + "\n" for i, (_, boxes) in enumerate(pictures)
        ).encode()
        routes["/table.jsonl"] = table
        region_pipeline(FakeVLMServing(), f"{base}/table.jsonl", tmp_path / "cache").run()
        assert hits["/table.jsonl"] >= 1
    rows = step2(tmp_path / "cache")
    assert [r["image"] for r in rows] == [f"{base}/img0.jpg", f"{base}/img1.jpg"]
    assert all(r["error"] is None for r in rows)


def test_the_split_of_a_dataset_dict_folder(tmp_path: Path) -> None:
    def split(seeds: range):
        items = [scene_with_boxes((96, 72), 2, seed=s) for s in seeds]
        return datasets.Dataset.from_dict(
            {"id": list(seeds), "image": [image_bytes(i) for i, _ in items], "bbox": [b for _, b in items]},
            features=datasets.Features(
                {
                    "id": datasets.Value("int64"),
                    "image": datasets.Image(),
                    "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
        )

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": split(range(1, 4)), "test": split(range(10, 12))}).save_to_disk(str(folder))
    summary = region_pipeline(FakeVLMServing(), str(folder), tmp_path / "cache", split="test").run()
    rows = step2(tmp_path / "cache")
    assert summary.rows_out == 2 and [r["id"] for r in rows] == [10, 11] and all(r["error"] is None for r in rows)
    assert all(Path(r["image"]["path"]).parent == tmp_path / "cache" / "media" for r in rows)
