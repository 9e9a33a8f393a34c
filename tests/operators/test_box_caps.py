"""Boxes per row are capped for every input form (issue 24, item 11).

A Data-Juicer row with 10^6 boxes took 4 GB in the Img-Diff region step and would have sent 2 * 10^6
requests; a region-caption row listed every invalid box in ``bbox_dropped``. Now Img-Diff reads at most
``max_input_boxes`` boxes of a row (counted in the summary as ``boxes_beyond_max_input_boxes``), and the
region-caption step stops reading at ``max_boxes`` valid boxes and describes at most 20 invalid ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from dataflow_mm import ExistingBBoxDataGenConfig
from dataflow_mm.imaging.bbox import parse_boxes
from dataflow_mm.operators.imgdiff.box_decisions import MAX_INPUT_BOXES
from dataflow_mm.operators.imgdiff.step1_region_captioner import ImgDiffRegionCaptioner
from tests.operators.test_image_bbox_generator import run_generator
from tests.support.fake_serving import FakeVLMServing
from tests.support.imgdiff_pairs import write_imgdiff_table
from tests.support.sample_data import write_jsonl, write_region_caption_table

MANY = 200_000


@pytest.mark.parametrize("form", ["column", "data-juicer meta"])
def test_img_diff_reads_at_most_max_input_boxes_per_row_and_counts_the_rest(tmp_path: Path, form: str) -> None:
    frame = pd.read_json(write_imgdiff_table(tmp_path, 2, 1, size=(320, 240)), lines=True)
    boxes = [[[40 + i % 200, 40 + i % 150, 20, 20] for i in range(MANY)], [[60, 60, 20, 20]]]
    keys = {"input_bbox_key": "bboxes"}
    if form == "column":
        frame = frame.assign(bboxes=boxes)
    else:
        keys = {"input_bbox_key": "__dj__meta__.__dj__bbox__"}  # what the run resolves "bboxes" to here
        frame = frame.drop(columns=["bboxes"]).assign(__dj__meta__=[{"__dj__bbox__": b} for b in boxes])
    serving = FakeVLMServing()
    captioner = ImgDiffRegionCaptioner(serving, max_box_area_ratio=None, max_input_boxes=30)
    started = time.monotonic()
    out = captioner.process_chunk(frame, **keys)
    metrics = captioner.chunk_metrics(out, **keys)
    assert time.monotonic() - started < 30
    assert [len(d) for d in out["bbox_decisions"]] == [30, 1]
    assert sum(len(call) for call in serving.calls) == 2 * (30 + 1)  # each read box, in both images
    assert metrics["boxes_beyond_max_input_boxes"] == MANY - 30
    assert metrics["boxes_after_parse_total"] == MANY + 1 and metrics["boxes_after_parse"] == 31
    assert out["error"].isna().all()


def test_img_diff_default_cap_and_its_check() -> None:
    assert ImgDiffRegionCaptioner(FakeVLMServing()).input_box_cap == MAX_INPUT_BOXES == 50
    with pytest.raises(Exception, match="max_input_boxes"):
        ImgDiffRegionCaptioner(FakeVLMServing(), max_input_boxes=0)


def test_region_boxes_stop_at_max_boxes_and_invalid_ones_are_counted_not_listed(tmp_path: Path) -> None:
    started = time.monotonic()
    result = parse_boxes([[1, 1, 2, 2]] * 1_000_000, "xywh", (10, 10), max_boxes=10)
    assert len(result.boxes_xyxy) == 10 and result.truncated == 1_000_000 - 10
    assert time.monotonic() - started < 10

    table = write_region_caption_table(tmp_path / "imgs", n_rows=1, n_boxes=1)
    row = json.loads(table.read_text().splitlines()[0])
    row["bbox"] = [[-50, -50, 1, 1]] * 5000 + [[10, 10, 20, 20]] * 50_000  # 5000 outside the image, then valid
    write_jsonl(table, [row])
    (out,) = run_generator(table, tmp_path / "cache", ExistingBBoxDataGenConfig(max_boxes=3))
    assert out["valid_bboxes_num"] == 3
    dropped = out["bbox_dropped"]
    assert len(dropped) == 22
    assert dropped[20] == "4980 more invalid boxes" and dropped[21] == "49997 boxes beyond max_boxes=3 (not read)"
