"""`dataflowmm export`: a real region-caption run and a real Img-Diff run written as training data that
`datasets` loads, in LLaMA-Factory's ShareGPT field names, with every input row accounted for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.cli.main import main as cli_main
from dataflow_mm.export import export_run, format_box
from dataflow_mm.pipeline.templates import load_pipeline_script
from tests.support.fake_serving import RegionAnswers
from tests.support.sample_data import write_jsonl, write_region_caption_table

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def region_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished region-caption run: 4 good rows (3 boxes each), a missing image, an all-invalid-box row."""
    tmp = tmp_path_factory.mktemp("region")
    table = write_region_caption_table(tmp / "imgs", n_rows=4, size=(320, 240), n_boxes=3)
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    rows.append({"id": 4, "image": str(tmp / "imgs" / "missing.jpg"), "bbox": [[1, 1, 10, 10]]})
    rows.append({"id": 5, "image": rows[0]["image"], "bbox": [[-50, -50, 0, 0]]})
    write_jsonl(table, rows)
    pipeline = load_pipeline_script("image_region_caption_pipeline").ImageRegionCaptionPipeline(
        RegionAnswers(lambda k: f"thing {k}", regions=lambda n: range(1, n)),  # every region but the last
        first_entry_file=str(table),
        cache_path=str(tmp / "cache"),
        output_image_with_bbox_path=None,
    )
    pipeline.run()
    return tmp / "cache"


def test_box_styles_have_the_documented_examples() -> None:
    assert format_box((50, 50, 250, 260), (640, 480), "qwen2_5_vl") == "[50, 50, 250, 260]"
    assert format_box((50, 50, 250, 260), (640, 480), "normalized") == "[78, 104, 391, 542]"


def test_sharegpt_export_loads_with_datasets_in_llama_factory_field_names(region_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharegpt"
    assert cli_main(["export", str(region_run), "--format", "sharegpt", "--out", str(out)]) == 0
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["kind"] == "region" and summary["rows_in"] == 6
    assert summary["rows_exported"] + sum(summary["rows_skipped"].values()) == summary["rows_in"]
    assert summary["rows_exported"] == 4 and summary["rows_skipped"] == {"row_error": 2}
    assert summary["regions_skipped"] == {"empty_caption": 4} and summary["turns"] == 8
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["dataflow_mm"] == {
        "file_name": "sharegpt.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images"},
    }
    data = datasets.load_dataset("json", data_files=str(out / "sharegpt.json"), split="train")
    assert len(data) == 4 and set(data.column_names) == {"conversations", "images"}
    for record in data:
        roles = [turn["from"] for turn in record["conversations"]]
        assert roles == ["human", "gpt"] * 2
        text = " ".join(turn["value"] for turn in record["conversations"])
        assert text.count("<image>") == len(record["images"]) == 1
        assert record["conversations"][0]["value"].startswith("<image>")
        image = out / record["images"][0]
        assert not Path(record["images"][0]).is_absolute() and image.is_file()


def test_boxes_are_written_in_pixels_or_normalized(region_run: Path, tmp_path: Path) -> None:
    source = json.loads((region_run / "region_caption_step3.jsonl").read_text().splitlines()[0])
    x, y, w, h = source["bbox"][0]
    for style, expected in (
        ("qwen2_5_vl", [x, y, x + w, y + h]),
        (
            "normalized",
            [round(x / 320 * 1000), round(y / 240 * 1000), round((x + w) / 320 * 1000), round((y + h) / 240 * 1000)],
        ),
    ):
        export_run(region_run, "llava", tmp_path / style, box_style=style)
        first = json.loads((tmp_path / style / "llava.json").read_text())[0]
        question = first["conversations"][0]["value"]
        assert json.loads(re.search(r"\[[\d, ]+\]", question).group(0)) == expected


@pytest.mark.parametrize("fmt", ["llava", "jsonl-messages"])
def test_llava_and_messages_load_with_datasets_and_copy_images(fmt: str, region_run: Path, tmp_path: Path) -> None:
    out = tmp_path / fmt
    stats = export_run(region_run, fmt, out, copy_images=True)
    name = {"llava": "llava.json", "jsonl-messages": "messages.jsonl"}[fmt]
    data = datasets.load_dataset("json", data_files=str(out / name), split="train")
    assert len(data) == stats.samples == 4
    copied = sorted(p.name for p in (out / "images").iterdir())
    assert len(copied) == 4
    for record in data:
        if fmt == "llava":
            (image,) = record["image"]  # always a list (one type in every sample of the format)
            assert image.startswith("images/") and (out / image).is_file()
            assert [t["from"] for t in record["conversations"]] == ["human", "gpt", "human", "gpt"]
        else:
            assert [m["role"] for m in record["messages"]] == ["user", "assistant"] * 2
            parts = record["messages"][0]["content"]
            assert [p["type"] for p in parts] == ["image", "text"] and parts[0]["image"] == record["images"][0]


def test_dropped_regions_are_left_out_and_counted(region_run: Path, tmp_path: Path) -> None:
    step = region_run / "region_caption_step3.jsonl"
    rows = [json.loads(line) for line in step.read_text().splitlines()]
    for row in rows:
        if row["error"] is None:
            row["region_kept"] = [False, True, True]
    edited = tmp_path / "edited_step3.jsonl"
    write_jsonl(edited, rows)
    with edited.open("a") as handle:
        handle.write("{not json\n")
    stats = export_run(edited, "sharegpt", tmp_path / "out")
    assert stats.regions_skipped == {"dropped": 4, "empty_caption": 4}
    assert stats.turns == 4 and stats.rows_exported == 4
    assert stats.rows_in == 7 and stats.rows_skipped == {"row_error": 2, "unreadable_record": 1}


def test_imgdiff_export_asks_about_the_marked_difference(tmp_path: Path) -> None:
    size = (200, 150)
    for name, color in (("a.jpg", (200, 0, 0)), ("b.jpg", (0, 0, 200))):
        Image.new("RGB", size, color).save(tmp_path / name)
    decision = {"index": 0, "bbox_xyxy": [10, 20, 60, 80], "kept": True, "difference_caption": "The box turned blue."}
    rows = [
        {
            "id": "p",
            "image_path1": str(tmp_path / "a.jpg"),
            "image_path2": str(tmp_path / "b.jpg"),
            "error": None,
            "bbox_decisions": [
                decision,
                {**decision, "index": 1, "kept": False},
                {**decision, "index": 2, "difference_caption": ""},
            ],
        },
        {
            "id": "q",
            "image_path1": "x.jpg",
            "image_path2": "y.jpg",
            "error": "ServingError: down",
            "bbox_decisions": [],
        },
        {
            "id": "r",
            "image_path1": str(tmp_path / "a.jpg"),
            "image_path2": str(tmp_path / "b.jpg"),
            "error": None,
            "bbox_decisions": [{**decision, "kept": False}],
        },
    ]
    step = write_jsonl(tmp_path / "imgdiff_step4.jsonl", rows)
    stats = export_run(step, "sharegpt", tmp_path / "out", box_style="normalized")
    assert stats.kind == "imgdiff" and stats.rows_in == 3 and stats.rows_exported == 1
    assert stats.rows_skipped == {"row_error": 1, "no_caption_left": 1} and stats.regions_skipped == {
        "empty_caption": 1
    }
    data = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "sharegpt.json"), split="train")
    (record,) = list(data)
    assert len(record["images"]) == 2 and record["conversations"][0]["value"].count("<image>") == 2
    assert "[50, 133, 300, 533]" in record["conversations"][0]["value"]
    assert record["conversations"][1]["value"] == "The box turned blue."


def test_a_table_with_nothing_to_export_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    step = write_jsonl(tmp_path / "x_step1.jsonl", [{"image": "a.jpg"}])
    assert cli_main(["export", str(step), "--format", "llava", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: nothing to export")


@pytest.mark.slow
@pytest.mark.parametrize("keep_panels", [True, False])
def test_a_real_imgdiff_run_exports_one_sample_per_kept_box(
    tmp_path: Path, tiny_blip_dir: Path, tiny_clip_dir: Path, keep_panels: bool
) -> None:
    from tests.support.fake_serving import FakeVLMServing
    from tests.support.imgdiff_pairs import write_imgdiff_table

    table = write_imgdiff_table(tmp_path / "pairs", n_pairs=3, n_boxes=2)
    pipeline = load_pipeline_script("imgdiff_pipeline").ImgDiffPipeline(
        FakeVLMServing(),
        first_entry_file=str(table),
        cache_path=str(tmp_path / "cache"),
        blip_model=str(tiny_blip_dir),
        similarity_model=str(tiny_clip_dir),
        itm_min_score=0.0,
        similarity_min_score=-1.0,
        keep_difference_images=keep_panels,
        allow_tiny_fallback=False,
    )
    pipeline.run()
    pipeline.cleanup()
    rows = [json.loads(line) for line in (tmp_path / "cache" / "imgdiff_step5.jsonl").read_text().splitlines()]
    kept = sum(1 for row in rows for d in row["bbox_decisions"] if d["kept"])
    stats = export_run(tmp_path / "cache", "llava", tmp_path / "out", copy_images=True)
    assert stats.kind == "imgdiff" and stats.rows_in == 3 and stats.samples == kept > 0
    data = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "llava.json"), split="train")
    for record in data:
        images = record["image"] if isinstance(record["image"], list) else [record["image"]]
        assert len(images) == (1 if keep_panels else 2)
        assert all((tmp_path / "out" / image).is_file() for image in images)
        question = record["conversations"][0]["value"]
        assert question.count("<image>") == len(images) and "difference" in question
