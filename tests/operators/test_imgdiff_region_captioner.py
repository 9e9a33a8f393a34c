"""Img-Diff step 1: region captions for every box in both images, one batched serving call per chunk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dataflow_mm.operators.imgdiff.step1_region_captioner import ImgDiffRegionCaptioner, normalized_box_text
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.serving.messages import split_images
from tests.support.fake_serving import FakeVLMServing
from tests.support.imgdiff_pairs import edited_pair, write_imgdiff_table


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_json(path, lines=True)


def prompts_of(calls: list) -> list[str]:
    return [split_images(c)[0][-1]["content"][-1]["text"] for call in calls for c in call]


def test_one_serving_call_per_chunk_whatever_the_number_of_boxes(tmp_path: Path) -> None:
    for n_rows, n_boxes in ((2, 1), (5, 4)):
        frame = read_table(write_imgdiff_table(tmp_path / f"t{n_rows}", n_rows, n_boxes))
        serving = FakeVLMServing()
        out = ImgDiffRegionCaptioner(serving).process_chunk(frame)
        assert len(serving.calls) == 1  # constant, not per box
        assert len(serving.calls[0]) == 2 * n_rows * n_boxes  # each box, in image 1 and image 2
        for decisions in out["bbox_decisions"]:
            assert len(decisions) == n_boxes
            assert all(d["kept"] and d["region_caption1"] and d["region_caption2"] for d in decisions)
        assert out["error"].isna().all()


def test_prompt_names_the_normalized_box_and_image2_is_resized(tmp_path: Path) -> None:
    first, second, boxes, _ = edited_pair((320, 240), 2, seed=3)
    first.save(tmp_path / "a.png")
    second.resize((160, 120)).save(tmp_path / "b.png")  # image 2 at another size
    x0, y0, x1, y1 = boxes[0]
    frame = pd.DataFrame(
        [{"image_path1": str(tmp_path / "a.png"), "image_path2": str(tmp_path / "b.png"),
          "bboxes": [[(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]]}]
    )  # fmt: skip
    serving = FakeVLMServing()
    out = ImgDiffRegionCaptioner(serving).process_chunk(frame)
    expected = normalized_box_text([x0, y0, x1, y1], (320, 240))
    assert prompts_of(serving.calls) == [f"Please provide a clear description for this region: {expected}."] * 2
    images = [split_images(c)[1][0] for c in serving.calls[0]]
    assert all(isinstance(i, Image.Image) and i.size == (320, 240) for i in images)
    assert out["bbox_decisions"][0][0]["bbox_xyxy"] == [x0, y0, x1, y1]


def test_normalized_box_text_has_two_decimals() -> None:
    assert normalized_box_text([32, 24, 160, 240], (320, 240)) == "[0.10, 0.10, 0.50, 1.00]"


@pytest.mark.parametrize(
    ("fmt", "normalized", "box"),
    [("cxcywh", False, [60, 50, 40, 20]), ("xywh", False, [40, 40, 40, 20]), ("xyxy", False, [40, 40, 80, 60]),
     ("xyxy", True, [0.125, 1 / 6, 0.25, 0.25])],
)  # fmt: skip
def test_every_box_format_addresses_the_same_pixels(tmp_path: Path, fmt: str, normalized: bool, box: list) -> None:
    table = write_imgdiff_table(tmp_path, 1, 2)
    frame = read_table(table).assign(bboxes=[[box]])
    out = ImgDiffRegionCaptioner(FakeVLMServing(), bbox_format=fmt, normalized=normalized).process_chunk(frame)
    assert out["bbox_decisions"][0][0]["bbox_xyxy"] == pytest.approx([40, 40, 80, 60])


def test_large_boxes_are_skipped_by_area_share(tmp_path: Path) -> None:
    frame = read_table(write_imgdiff_table(tmp_path, 1, 2, size=(320, 240))).assign(
        bboxes=[[[160, 120, 100, 80], [160, 120, 80, 80], [50, 50, 20, 20]]]  # 10.4%, 8.3%, 0.5% of the image
    )
    serving = FakeVLMServing()
    out = ImgDiffRegionCaptioner(serving, max_box_area_ratio=0.1).process_chunk(frame)
    decisions = out["bbox_decisions"][0]
    assert [d["kept"] for d in decisions] == [False, True, True]
    assert decisions[0]["dropped_at"] == "area" and "max_box_area_ratio=0.1" in decisions[0]["drop_reason"]
    assert len(serving.calls[0]) == 4
    everything = ImgDiffRegionCaptioner(FakeVLMServing(), max_box_area_ratio=None).process_chunk(frame)
    assert all(d["kept"] for d in everything["bbox_decisions"][0])


def test_rows_without_boxes_make_no_request_and_bad_rows_keep_their_place(tmp_path: Path) -> None:
    frame = read_table(write_imgdiff_table(tmp_path, 6, 1))
    frame["bboxes"] = [None, [], [[0, 0, 0, 0]], [[10, 10, -5, 4], [40, 40, 20, 20]], [[40, 40, 20, 20]], "oops"]
    frame.loc[4, "image_path2"] = str(tmp_path / "missing.jpg")
    serving = FakeVLMServing(fail_when=lambda prompt: False)
    out = ImgDiffRegionCaptioner(serving).process_chunk(frame)
    decisions = out["bbox_decisions"].tolist()
    assert decisions[:3] == [[], [], []]  # missing, empty, all zero: nothing to describe
    assert [d["dropped_at"] for d in decisions[3]] == ["parse", None]
    assert "degenerate" in decisions[3][0]["drop_reason"]
    assert out["error"][4].startswith("ImageNotFoundError")
    assert out["error"][5].startswith("InvalidBoxError")
    assert out["error"][:4].isna().all()
    assert len(serving.calls) == 1 and len(serving.calls[0]) == 2  # only the one good box


def test_a_failed_request_drops_its_box_with_the_reason(tmp_path: Path) -> None:
    frame = read_table(write_imgdiff_table(tmp_path, 1, 1)).assign(bboxes=[[[40, 40, 20, 20], [200, 100, 30, 30]]])
    first_box = normalized_box_text([30, 30, 50, 50], (320, 240))
    serving = FakeVLMServing(fail_when=lambda prompt: first_box in prompt)
    decisions = ImgDiffRegionCaptioner(serving).process_chunk(frame)["bbox_decisions"][0]
    assert decisions[0]["dropped_at"] == "region_caption" and "fake failure" in decisions[0]["drop_reason"]
    assert decisions[1]["kept"]


@pytest.mark.slow
@pytest.mark.parametrize("model_fixture", ["tiny_llava_dir", "tiny_qwen_dir"])
def test_real_backend_answers_all_regions_in_one_call(
    tmp_path: Path, model_fixture: str, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    frame = read_table(write_imgdiff_table(tmp_path, 3, 2, size=(160, 120)))
    serving = LocalModelVLMServing_hf(str(model_dir), batch_size=16, temperature=0.0, max_tokens=4)
    out = ImgDiffRegionCaptioner(serving).process_chunk(frame)
    assert serving.stats.calls == 1 and serving.stats.requests == 12
    for decisions in out["bbox_decisions"]:
        assert all(isinstance(d["region_caption1"], str) and isinstance(d["region_caption2"], str) for d in decisions)
    serving.cleanup()
