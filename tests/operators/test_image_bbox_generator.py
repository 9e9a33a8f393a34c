"""ImageBboxGenerator: seed fields, normalization, drawing, proposals, content-named outputs, row errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from PIL import Image

from dataflow_mm import ExistingBBoxDataGenConfig, FileStorage, ImageBboxGenerator
from tests.support.sample_data import write_jsonl, write_region_caption_table

SEED_FIELDS = {
    "image",
    "type",
    "bbox",
    "normalized_bbox",
    "result_file",
    "image_with_bbox",
    "valid_bboxes_num",
    "prompt",
}


def run_generator(table: Path, cache: Path, config: ExistingBBoxDataGenConfig | None = None) -> list[dict]:
    storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="t")
    ImageBboxGenerator(config=config).run(storage=storage.step(), input_image_key="image", input_bbox_key="bbox")
    return [json.loads(line) for line in (cache / "t_step1.jsonl").read_text().splitlines()]


def test_seed_example_box_normalizes_exactly(tmp_path: Path) -> None:
    Image.new("RGB", (1536, 832), "white").save(tmp_path / "20.png")
    table = write_jsonl(tmp_path / "in.jsonl", [{"image": str(tmp_path / "20.png"), "bbox": [[196, 104, 310, 495]]}])
    (row,) = run_generator(table, tmp_path / "cache")
    assert row.keys() >= SEED_FIELDS
    assert row["type"] == "with_bbox"
    assert row["bbox"] == [[196, 104, 310, 495]]
    assert row["normalized_bbox"][0] == [0.128, 0.125, 0.329, 0.72]
    assert row["normalized_bbox"][1:] == [[0.0, 0.0, 0.0, 0.0]] * 9
    assert row["valid_bboxes_num"] == 1
    assert row["prompt"] == (
        "Describe the content of each marked region in the image. There are 1 regions: <region1> to <region1>."
    )
    assert row["error"] is None


def test_boxes_are_drawn_on_a_new_image_in_the_cache(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2, n_boxes=3)
    rows = run_generator(table, tmp_path / "cache")
    for row in rows:
        drawn = Image.open(row["image_with_bbox"]).convert("RGB")
        original = Image.open(row["image"]).convert("RGB")
        assert Path(row["image_with_bbox"]).parent == tmp_path / "cache"
        assert row["result_file"] == str(tmp_path / "cache")
        assert drawn.size == original.size
        x, y, w, _ = row["bbox"][0]
        top_edge = [drawn.getpixel((int(x + w * f), y)) for f in (0.25, 0.5, 0.75)]
        assert any(px != original.getpixel((int(x + w * 0.5), y)) for px in top_edge)


def test_rows_without_boxes_get_proposed_boxes(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2, n_boxes=2, without_boxes=1)
    rows = run_generator(table, tmp_path / "cache")
    assert [r["type"] for r in rows] == ["with_bbox", "without_bbox"]
    assert rows[1]["valid_bboxes_num"] >= 1
    assert len(rows[1]["bbox"]) == rows[1]["valid_bboxes_num"]
    assert len(rows[1]["normalized_bbox"]) == 10


def test_output_images_are_named_from_content(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3)
    first = run_generator(table, tmp_path / "cache_a")
    again = run_generator(table, tmp_path / "cache_b")
    names = [Path(r["image_with_bbox"]).name for r in first]
    assert len(set(names)) == 3
    assert names == [Path(r["image_with_bbox"]).name for r in again]
    other = run_generator(table, tmp_path / "cache_c", ExistingBBoxDataGenConfig(line_width=9))
    assert not set(names) & {Path(r["image_with_bbox"]).name for r in other}


def test_bad_rows_keep_their_place_with_an_error(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1)
    good = json.loads(table.read_text())
    write_jsonl(
        table,
        [
            good,
            {"image": str(tmp_path / "missing.jpg"), "bbox": [[1, 1, 5, 5]]},
            {"image": good["image"], "bbox": [[-50, -50, 10, 10]]},
            {"image": good["image"], "bbox": [[1, 1, 5, 5], "oops", [2, 2, 4, 4]]},
        ],
    )
    rows = run_generator(table, tmp_path / "cache")
    assert len(rows) == 4
    assert rows[0]["error"] is None
    assert rows[1]["error"].startswith("ImageNotFoundError:") and "missing.jpg" in rows[1]["error"]
    assert rows[2]["error"].startswith("InvalidBoxError:")
    assert rows[3]["error"] is None and rows[3]["valid_bboxes_num"] == 2
    assert len(rows[3]["bbox_dropped"]) == 1 and "oops" in rows[3]["bbox_dropped"][0]


def test_max_boxes_caps_and_reports_the_rest(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1, n_boxes=5)
    (row,) = run_generator(table, tmp_path / "cache", ExistingBBoxDataGenConfig(max_boxes=3))
    assert row["valid_bboxes_num"] == 3 and len(row["normalized_bbox"]) == 3
    assert row["bbox_dropped"] == ["2 boxes beyond max_boxes=3 (not read)"]


def test_config_output_path_gets_a_copy_of_the_step(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    copy = tmp_path / "elsewhere" / "with_bbox.jsonl"
    run_generator(table, tmp_path / "cache", ExistingBBoxDataGenConfig(output_jsonl_path=str(copy)))
    assert copy.read_text() == (tmp_path / "cache" / "t_step1.jsonl").read_text()


def test_process_is_a_pure_batch_transform(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3)
    frame = pd.read_json(table, lines=True, dtype=False).assign(error=None)
    generator = ImageBboxGenerator()
    generator.prepare(FileStorage(str(table), cache_path=str(tmp_path / "cache")))
    out = generator.process(
        frame,
        input_image_key="image",
        input_bbox_key="bbox",
        output_image_key="marked",
        output_prompt_key="question",
    )
    assert list(out.index) == list(frame.index)
    assert {"marked", "question"} <= set(out.columns)
    assert "image_with_bbox" not in out.columns


def test_a_failed_row_keeps_its_input_boxes(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1)
    good = json.loads(table.read_text())
    bad_boxes = [[-50, -50, 10, 10]]
    write_jsonl(table, [good, {"image": good["image"], "bbox": bad_boxes, "note": "keep me"}])
    rows = run_generator(table, tmp_path / "cache")
    assert rows[1]["error"].startswith("InvalidBoxError:")
    assert rows[1]["bbox"] == bad_boxes and rows[1]["note"] == "keep me"  # not overwritten with null
    assert rows[1]["image_with_bbox"] is None and rows[1]["prompt"] is None


def test_when_every_row_fails_every_output_column_still_exists(tmp_path: Path) -> None:
    table = write_jsonl(tmp_path / "in.jsonl", [{"image": str(tmp_path / f"gone{i}.jpg")} for i in range(2)])
    rows = run_generator(table, tmp_path / "cache")
    assert all(r["error"].startswith("ImageNotFoundError:") for r in rows)
    for key in ("type", "bbox", "normalized_bbox", "image_with_bbox", "valid_bboxes_num", "prompt", "bbox_dropped"):
        assert all(key in r and r[key] is None for r in rows), key


def test_a_box_key_the_caller_named_must_exist_in_some_row(tmp_path: Path) -> None:
    """input_bbox_key="bboxes" on a table whose boxes are under "bbox" stops, instead of proposing boxes."""
    import pytest

    from dataflow_mm.common.errors import PipelineCompileError

    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"), file_name_prefix="t")
    with pytest.raises(PipelineCompileError, match=r"input key 'bboxes' exists in no row.*'bbox'"):
        ImageBboxGenerator().run(storage=storage.step(), input_image_key="image", input_bbox_key="bboxes")
    assert not (tmp_path / "cache" / "t_step1.jsonl").exists()


def test_a_chunks_drawn_images_are_made_durable_at_once_before_they_get_their_names(
    tmp_path: Path, monkeypatch
) -> None:
    """One data sync for the chunk's images (each still a temp file), then the renames, then one folder sync."""
    from dataflow_mm.storage import atomic

    table = write_region_caption_table(tmp_path / "imgs", n_rows=6, n_boxes=2)
    cache = tmp_path / "cache"
    cache.mkdir()
    generator = ImageBboxGenerator()
    generator._image_dir = cache
    events: list[tuple[str, list[str]]] = []
    sync_data, sync_folder = atomic.sync_data, atomic.fsync_folder

    def recording_sync(paths):  # type: ignore[no-untyped-def]
        assert all(p.is_file() and p.name.endswith(".tmp") for p in paths)
        events.append(("data", sorted(p.name for p in cache.iterdir() if not p.name.endswith(".tmp"))))
        sync_data(paths)

    monkeypatch.setattr(atomic, "sync_data", recording_sync)
    monkeypatch.setattr(atomic, "fsync_folder", lambda p: events.append(("folder", [str(p)])) or sync_folder(p))
    frame = pd.read_json(table, lines=True)
    frame["error"] = None

    out = generator.process(frame)

    assert out["error"].isna().all() and len(set(out["image_with_bbox"])) == 6
    assert events == [("data", []), ("folder", [str(cache)])]  # no image had its name before its data was durable
    assert sorted(p.name for p in cache.iterdir()) == sorted(Path(p).name for p in out["image_with_bbox"])


def test_sync_data_without_syncfs_fsyncs_each_file(tmp_path: Path, monkeypatch) -> None:
    import os

    from dataflow_mm.storage import atomic

    files = [tmp_path / f"{i}.tmp" for i in range(3)]
    for path in files:
        path.write_bytes(b"x")
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(atomic, "_SYNCFS", None)  # not Linux
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or fsync(fd))
    atomic.sync_data(files)
    assert len(synced) == 3


def test_output_files_equal_those_of_the_sequential_path(tmp_path: Path) -> None:
    """Two workers write the same files (names and bytes) as one, each named by its own bytes."""
    from dataflow_mm.storage.naming import content_name

    table = write_region_caption_table(tmp_path / "imgs", n_rows=12, n_boxes=3)
    pooled = run_generator(table, tmp_path / "pooled", ExistingBBoxDataGenConfig(num_workers=2))
    single = run_generator(table, tmp_path / "single", ExistingBBoxDataGenConfig(num_workers=1))
    for a, b in zip(pooled, single, strict=True):
        assert Path(a["image_with_bbox"]).name == Path(b["image_with_bbox"]).name
        data = Path(a["image_with_bbox"]).read_bytes()
        assert data == Path(b["image_with_bbox"]).read_bytes()
        assert Path(a["image_with_bbox"]).name == content_name(Path(a["image"]).stem + "_bbox_vis", data, ".jpg")
    assert not [p for p in (tmp_path / "pooled").iterdir() if p.name.endswith(".tmp")]
