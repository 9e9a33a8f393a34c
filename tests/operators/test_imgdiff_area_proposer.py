"""Img-Diff step 0: boxes from the pixel difference of the pair, for rows that come without boxes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dataflow_mm.imaging.bbox import iou, to_xyxy
from dataflow_mm.operators.imgdiff.area_proposer import ImgDiffDifferenceAreaProposer
from tests.support.imgdiff_pairs import edited_pair


def write_pair(folder: Path, edit: str, seed: int) -> tuple[dict, tuple]:
    first, second, _, truth = edited_pair((320, 240), 4, seed=seed, edit=edit)
    folder.mkdir(parents=True, exist_ok=True)
    first.save(folder / f"{edit}{seed}_1.jpg", quality=92)
    second.save(folder / f"{edit}{seed}_2.jpg", quality=92)
    row = {"image_path1": str(folder / f"{edit}{seed}_1.jpg"), "image_path2": str(folder / f"{edit}{seed}_2.jpg")}
    return row, truth


@pytest.mark.parametrize("edit", ["recolour", "remove", "add"])
@pytest.mark.parametrize("fmt", ["cxcywh", "xywh"])
def test_proposer_finds_the_edited_object(tmp_path: Path, edit: str, fmt: str) -> None:
    rows, truths = zip(*(write_pair(tmp_path, edit, seed) for seed in range(3)), strict=True)
    out = ImgDiffDifferenceAreaProposer(bbox_format=fmt).process_chunk(pd.DataFrame(list(rows)))
    assert out["bbox_source"].tolist() == ["proposed"] * 3
    for boxes, truth in zip(out["bboxes"], truths, strict=True):
        best = max(iou(to_xyxy(box, fmt, (320, 240)), truth) for box in boxes)
        assert best >= 0.7


def test_rows_with_boxes_keep_them_and_zero_boxes_follow_the_seed(tmp_path: Path) -> None:
    rows = [write_pair(tmp_path, "recolour", seed)[0] for seed in range(4)]
    given = [[50, 50, 10, 10]]
    frame = pd.DataFrame(rows).assign(bboxes=[given, None, [[0, 0, 0, 0]], []])
    out = ImgDiffDifferenceAreaProposer().process_chunk(frame)
    assert out["bboxes"][0] == given and out["bbox_source"][0] == "input"
    assert out["bbox_source"][1] == "proposed" and len(out["bboxes"][1]) >= 1
    assert out["bboxes"][2] == [[0, 0, 0, 0]] and out["bbox_source"][2] == "input"  # "no difference" marker kept
    assert out["bbox_source"][3] == "proposed"
    again = ImgDiffDifferenceAreaProposer(propose_for_zero_boxes=True).process_chunk(frame)
    assert again["bbox_source"][2] == "proposed" and again["bboxes"][2] != [[0, 0, 0, 0]]


def test_identical_images_give_no_boxes_and_missing_images_an_error(tmp_path: Path) -> None:
    row, _ = write_pair(tmp_path, "recolour", 0)
    same = {"image_path1": row["image_path1"], "image_path2": row["image_path1"]}
    missing = {"image_path1": row["image_path1"], "image_path2": str(tmp_path / "nope.jpg")}
    out = ImgDiffDifferenceAreaProposer().process_chunk(pd.DataFrame([same, missing]))
    assert out["bboxes"][0] == [] and pd.isna(out["error"][0])
    assert out["error"][1].startswith("ImageNotFoundError")


def test_a_box_key_the_caller_named_must_exist_instead_of_proposing_for_every_row(tmp_path: Path) -> None:
    from dataflow_mm import FileStorage
    from dataflow_mm.common.errors import PipelineCompileError
    from tests.support.imgdiff_pairs import write_imgdiff_table

    table = write_imgdiff_table(tmp_path, 2, 2)  # boxes under "bboxes"
    storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"), file_name_prefix="p")
    with pytest.raises(PipelineCompileError, match=r"'boxes' exists in no row.*'bboxes'"):
        ImgDiffDifferenceAreaProposer().run(storage.step(), input_bbox_key="boxes")
    assert not (tmp_path / "cache" / "p_step1.jsonl").exists()
