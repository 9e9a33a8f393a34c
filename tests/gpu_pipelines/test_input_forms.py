"""Both pipelines on the inputs users already hold: a Hugging Face Image Parquet shard (bytes and
path-only structs), lists of paths, http(s) URLs from a local server (with a 404 and an oversize
image), a folder of images and a Hugging Face dataset id that is not cached offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.pipeline.templates import load_pipeline_script
from dataflow_mm.report import write_report
from dataflow_mm.storage.formats import read_table
from tests.support.fake_serving import FakeVLMServing
from tests.support.imgdiff_pairs import edited_pair
from tests.support.sample_data import scene_with_boxes
from tests.support.user_inputs import image_bytes, image_http_server, write_hf_image_shard

REPO = Path(__file__).resolve().parents[2]


def region_pipeline(serving: FakeVLMServing, table: Path | str, cache: Path, **kwargs):
    script = load_pipeline_script("image_region_caption_pipeline")
    return script.ImageRegionCaptionPipeline(
        serving, first_entry_file=str(table), cache_path=str(cache), output_image_with_bbox_path=None, **kwargs
    )


def scenes(n: int) -> list[tuple[bytes, list[list[int]]]]:
    return [(image_bytes(image), boxes) for image, boxes in (scene_with_boxes((96, 72), 2, seed=i) for i in range(n))]


@pytest.mark.parametrize("cache_type", ["jsonl", "parquet"])
def test_region_captions_from_a_hugging_face_parquet_shard(tmp_path: Path, cache_type: str) -> None:
    items = scenes(3)
    shard = write_hf_image_shard(
        tmp_path / "train-00000-of-00001.parquet",
        {
            "image": [{"bytes": data, "path": f"img{i}.jpg"} for i, (data, _) in enumerate(items[:2])]
            + [{"bytes": items[2][0], "path": None}],
            "bbox": [boxes for _, boxes in items],
        },
        ["image"],
    )
    cache = tmp_path / "cache"
    serving = FakeVLMServing()
    summary = region_pipeline(serving, shard, cache, cache_type=cache_type).run()
    rows = read_table(cache / f"region_caption_step2.{cache_type}").frame.to_dict(orient="records")
    assert summary.rows_out == 3 and [r["error"] for r in rows] == [None] * 3
    assert all(isinstance(r["answer"], str) for r in rows) and len(serving.calls) == 1
    for row, (data, _) in zip(rows, items, strict=True):
        stored = Path(row["image"]["path"])  # the struct keeps its shape, bytes moved to the media cache
        assert row["image"]["bytes"] is None and stored.parent == cache / "media" and stored.read_bytes() == data
        assert Path(row["image_with_bbox"]).is_file()
    assert (cache / "report.html").is_file()  # the end-of-run report did not crash on dict cells
    page = (cache / "report.html").read_text()
    assert "media/img0_" in page
    # the input itself (step 0, bytes) renders through thumbnails written under the cache
    write_report(cache, step=0, out=tmp_path / "input.html")
    thumbs = sorted((cache / "report_thumbs").glob("*.jpg"))
    assert len(thumbs) == 3 and all(Image.open(t).size[0] <= 320 for t in thumbs)
    assert "report_thumbs/" in (tmp_path / "input.html").read_text()


def test_path_only_structs_and_lists_of_paths(tmp_path: Path) -> None:
    items = scenes(2)
    for index, (data, _) in enumerate(items):
        (tmp_path / f"p{index}.jpg").write_bytes(data)
    shard = write_hf_image_shard(
        tmp_path / "paths.parquet",
        {"image": [{"bytes": None, "path": f"p{i}.jpg"} for i in range(2)], "bbox": [b for _, b in items]},
        ["image"],
    )
    serving = FakeVLMServing()
    region_pipeline(serving, shard, tmp_path / "c1").run()
    rows = [json.loads(x) for x in (tmp_path / "c1" / "region_caption_step2.jsonl").read_text().splitlines()]
    assert [r["error"] for r in rows] == [None, None]  # was MissingFieldError "... not dict"

    listed = tmp_path / "listed.jsonl"
    listed.write_text(
        json.dumps({"image": ["p0.jpg", "p1.jpg"], "bbox": items[0][1]})
        + "\n"
        + json.dumps({"image": ["p1.jpg"]})
        + "\n"
    )
    region_pipeline(FakeVLMServing(), listed, tmp_path / "c2").run()
    rows = [json.loads(x) for x in (tmp_path / "c2" / "region_caption_step2.jsonl").read_text().splitlines()]
    assert [r["error"] for r in rows] == [None, None]
    assert rows[0]["warning"] == "'image' holds 2 images; only the first was used" and rows[1]["warning"] is None
    assert rows[0]["image"] == ["p0.jpg", "p1.jpg"]  # the input cell is kept as read


def test_region_captions_from_urls_with_a_404_and_an_oversize_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataflow_mm.storage.downloads as downloads

    monkeypatch.setattr(downloads, "MAX_DOWNLOAD_BYTES", 20_000)
    items = scenes(2)
    with image_http_server({"/a.jpg": items[0][0], "/b.jpg": items[1][0]}, oversize_bytes=50_000) as (base, hits):
        table = tmp_path / "urls.jsonl"
        urls = [f"{base}/a.jpg", f"{base}/b.jpg", f"{base}/gone.jpg", f"{base}/oversize.jpg"]
        table.write_text("".join(json.dumps({"image": u, "bbox": items[0][1]}) + "\n" for u in urls))
        summary = region_pipeline(FakeVLMServing(), table, tmp_path / "cache").run()
        assert hits["/a.jpg"] == 1  # downloaded once, reused from the media cache
    rows = [json.loads(x) for x in (tmp_path / "cache" / "region_caption_step2.jsonl").read_text().splitlines()]
    assert summary.rows_out == 4 and [r["image"] for r in rows] == urls
    assert rows[0]["error"] is None and rows[1]["error"] is None
    assert rows[2]["error"].startswith("ImageDownloadError") and "HTTP 404" in rows[2]["error"]
    assert rows[3]["error"].startswith("ImageDownloadError") and "cap of 20000" in rows[3]["error"]
    assert rows[2]["answer"] is None and rows[3]["answer"] is None


def test_region_captions_from_a_folder_of_images(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for relative, (image, _) in zip(
        ["z.jpg", "a/b/1.png", "a/2.JPG"], [scene_with_boxes((96, 72), 2, s) for s in range(3)], strict=True
    ):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / relative)
    (folder / "a" / "list.csv").write_text("not,an,image\n")
    summary = region_pipeline(FakeVLMServing(), folder, tmp_path / "cache").run()
    rows = [json.loads(x) for x in (tmp_path / "cache" / "region_caption_step2.jsonl").read_text().splitlines()]
    assert summary.rows_out == 3 and [Path(r["image"]).name for r in rows] == ["2.JPG", "1.png", "z.jpg"]
    assert [r["type"] for r in rows] == ["without_bbox"] * 3 and all(r["error"] is None for r in rows)


def test_script_stops_with_exit_2_for_a_dataset_that_is_not_cached_offline(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "empty_hub"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    script = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
    done = subprocess.run(
        [sys.executable, str(script), "--first_entry_file", "hf://datasets/someone/photos", "--cache_path", "c"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert done.stderr.rstrip().endswith(line)
    assert line.startswith("error: Hugging Face dataset 'someone/photos' is not in the local cache")
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_imgdiff_pipeline_on_a_hugging_face_shard_and_urls(
    tmp_path: Path, tiny_blip_dir: Path, tiny_clip_dir: Path
) -> None:
    pairs = [edited_pair((160, 120), 3, seed=s) for s in range(2)]
    shard = write_hf_image_shard(
        tmp_path / "pairs.parquet",
        {
            "image_path1": [{"bytes": image_bytes(a), "path": f"{i}_1.jpg"} for i, (a, _, _, _) in enumerate(pairs)],
            "image_path2": [{"bytes": image_bytes(b), "path": f"{i}_2.jpg"} for i, (_, b, _, _) in enumerate(pairs)],
        },
        ["image_path1", "image_path2"],
    )
    script = load_pipeline_script("imgdiff_pipeline")
    options = dict(blip_model=str(tiny_blip_dir), similarity_model=str(tiny_clip_dir), itm_min_score=0.0,
                   similarity_min_score=-1.0, allow_tiny_fallback=False)  # fmt: skip
    summary = script.ImgDiffPipeline(FakeVLMServing(), first_entry_file=str(shard), cache_path=str(tmp_path / "c1"),
                                     cache_type="parquet", **options).run()  # fmt: skip
    rows = read_table(tmp_path / "c1" / "imgdiff_step5.parquet").frame.to_dict(orient="records")
    assert summary.rows_out == 2 and [r["error"] for r in rows] == [None, None]
    assert all(len(r["bbox_decisions"]) > 0 for r in rows)  # boxes proposed from the decoded bytes
    assert all(Path(r["image_path1"]["path"]).parent == tmp_path / "c1" / "media" for r in rows)

    with image_http_server({"/1.jpg": image_bytes(pairs[0][0]), "/2.jpg": image_bytes(pairs[0][1])}) as (base, _):
        table = tmp_path / "urls.jsonl"
        rows_in = [{"image_path1": f"{base}/1.jpg", "image_path2": f"{base}/2.jpg"},
                   {"image_path1": f"{base}/1.jpg", "image_path2": f"{base}/missing.jpg"}]  # fmt: skip
        table.write_text("".join(json.dumps(r) + "\n" for r in rows_in))
        script.ImgDiffPipeline(FakeVLMServing(), first_entry_file=str(table), cache_path=str(tmp_path / "c2"),
                               **options).run()  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "c2" / "imgdiff_step5.jsonl").read_text().splitlines()]
    assert rows[0]["error"] is None and rows[0]["bbox_decisions"]
    assert rows[1]["error"].startswith("ImageDownloadError") and "HTTP 404" in rows[1]["error"]
