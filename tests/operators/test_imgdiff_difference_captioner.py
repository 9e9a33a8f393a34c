"""Img-Diff step 5: red-box panels, one batched difference request per chunk, the final equal-length columns."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dataflow_mm.operators.imgdiff.box_decisions import candidate_decisions, drop
from dataflow_mm.operators.imgdiff.step5_difference_captioner import ImgDiffDifferenceCaptioner, difference_panel
from dataflow_mm.serving.messages import split_images
from dataflow_mm.storage.file_storage import FileStorage
from tests.support.fake_serving import FakeVLMServing
from tests.support.imgdiff_pairs import write_imgdiff_table

FINAL = ("region_caption1", "region_caption2", "bboxes", "bbox_difference_captions")


def captioned_frame(tmp_path: Path, n_rows: int = 3, n_boxes: int = 2) -> pd.DataFrame:
    frame = pd.read_json(write_imgdiff_table(tmp_path, n_rows, n_boxes), lines=True)
    all_decisions = []
    for row, raw in enumerate(frame["bboxes"]):
        decisions = candidate_decisions(raw, "cxcywh", False, (320, 240))
        for d in decisions:
            d["region_caption1"], d["region_caption2"] = f"left {row}.{d['index']}", f"right {row}.{d['index']}"
        all_decisions.append(decisions)
    frame["bbox_decisions"] = all_decisions
    return frame


def test_panel_has_both_images_a_black_bar_and_the_padded_red_box() -> None:
    image1, image2 = Image.new("RGB", (100, 80), (200, 200, 200)), Image.new("RGB", (100, 80), (90, 90, 90))
    panel = difference_panel(image1, image2, [20, 20, 40, 50], padding=5, line_width=3, bar_width=20)
    assert panel.size == (220, 80)
    assert panel.getpixel((110, 40)) == (0, 0, 0)  # the bar
    for offset in (0, 120):  # the same box on both halves, grown by the padding
        assert panel.getpixel((offset + 15, 30)) == (255, 0, 0)
        assert panel.getpixel((offset + 30, 15)) == (255, 0, 0)
        assert panel.getpixel((offset + 30, 35)) != (255, 0, 0)  # inside stays untouched
    clamped = difference_panel(image1, image2, [0, 0, 10, 10], padding=5)
    assert clamped.getpixel((0, 0)) == (255, 0, 0)  # padding clamped to the image


def test_one_call_per_chunk_and_equal_length_final_columns(tmp_path: Path) -> None:
    frame = captioned_frame(tmp_path)
    drop(frame["bbox_decisions"][1][0], "caption_similarity", "too similar")
    serving = FakeVLMServing()
    out = ImgDiffDifferenceCaptioner(serving).process_chunk(frame)
    assert len(serving.calls) == 1 and len(serving.calls[0]) == 5
    messages, images = split_images(serving.calls[0][0])
    assert images[0].size == (2 * 320 + 20, 240)
    assert "left 0.0" in messages[-1]["content"][-1]["text"] and "right 0.0" in messages[-1]["content"][-1]["text"]
    for row in out.to_dict(orient="records"):
        assert len({len(row[key]) for key in FINAL}) == 1
        assert all(isinstance(text, str) and text for text in row["bbox_difference_captions"])
    assert out["bboxes"][1] == [frame["bbox_decisions"][1][1]["bbox"]]  # kept boxes only, as given
    assert "difference_images" not in out.columns


def test_rows_with_no_kept_box_get_the_seed_empty_result(tmp_path: Path) -> None:
    frame = captioned_frame(tmp_path, 2, 1)
    frame.at[0, "bbox_decisions"] = []
    drop(frame["bbox_decisions"][1][0], "image_text_matching", "no match")
    serving = FakeVLMServing()
    out = ImgDiffDifferenceCaptioner(serving).process_chunk(frame)
    assert serving.calls == []  # nothing to ask
    for row in out.to_dict(orient="records"):
        assert (row["region_caption1"], row["region_caption2"], row["bboxes"], row["bbox_difference_captions"]) == (
            [""], [""], [[0, 0, 0, 0]], [""]
        )  # fmt: skip
    empty = ImgDiffDifferenceCaptioner(FakeVLMServing(), empty_result="empty").process_chunk(frame)
    assert all(empty[key].tolist() == [[], []] for key in FINAL)


def test_failed_difference_request_drops_the_box(tmp_path: Path) -> None:
    frame = captioned_frame(tmp_path, 1, 2)
    serving = FakeVLMServing(fail_when=lambda prompt: "left 0.1" in prompt)
    out = ImgDiffDifferenceCaptioner(serving).process_chunk(frame)
    decisions = out["bbox_decisions"][0]
    assert decisions[1]["dropped_at"] == "difference_caption" and "fake failure" in decisions[1]["drop_reason"]
    assert len(out["bbox_difference_captions"][0]) == 1


def test_kept_panels_are_content_named_files_under_the_cache_path(tmp_path: Path) -> None:
    frame = captioned_frame(tmp_path / "data", 2, 2)
    storage = FileStorage(str(tmp_path / "data" / "table.jsonl"), cache_path=str(tmp_path / "cache"))
    op = ImgDiffDifferenceCaptioner(FakeVLMServing(), keep_difference_images=True)
    op.prepare(storage)
    out = op.process_chunk(frame)
    paths = [Path(p) for row in out["difference_images"] for p in row]
    assert len(paths) == 4 and all(p.is_file() for p in paths)
    assert all(p.parent == tmp_path / "cache" / "imgdiff_difference_images" for p in paths)
    assert all(re.fullmatch(r"pair000\d_1_diff\d_[0-9a-f]{16}\.jpg", p.name) for p in paths)
    again = op.process_chunk(frame)  # same content, same names: a re-run overwrites nothing new
    assert again["difference_images"].tolist() == out["difference_images"].tolist()
    assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)  # no temp files


@pytest.mark.parametrize("bad", ["seedless", "none"])
def test_unknown_empty_result_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="empty_result"):
        ImgDiffDifferenceCaptioner(FakeVLMServing(), empty_result=bad)
