"""Box parsing, conversion, clipping, normalization and padding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dataflow_mm.common.errors import InvalidBoxError, RowError, row_error_text
from dataflow_mm.imaging import (
    BOX_FORMATS,
    BoxParseResult,
    box_area,
    clip_box,
    from_xyxy,
    iou,
    normalize_xyxy,
    pad_boxes,
    parse_box,
    parse_boxes,
    to_xyxy,
)

SEED_SIZE = (1536, 832)  # the region-caption seed's image (W, H)


def test_seed_example_normalizes_exactly():
    result = parse_boxes([[196, 104, 310, 495]], "xywh", SEED_SIZE, max_boxes=10)
    normalized = [normalize_xyxy(b, SEED_SIZE) for b in result.boxes_xyxy]
    assert normalized == [[0.128, 0.125, 0.329, 0.72]]
    padded = pad_boxes(normalized, 10)
    assert padded[0] == [0.128, 0.125, 0.329, 0.72]
    assert padded[1:] == [[0.0, 0.0, 0.0, 0.0]] * 9


def test_format_conversions_by_hand():
    size = (200, 100)
    assert to_xyxy([10, 20, 30, 40], "xywh", size) == (10, 20, 40, 60)
    assert to_xyxy([25, 40, 30, 40], "cxcywh", size) == (10, 20, 40, 60)
    assert to_xyxy([10, 20, 40, 60], "xyxy", size) == (10, 20, 40, 60)
    assert to_xyxy([0.05, 0.2, 0.15, 0.4], "xywh", size, normalized=True) == pytest.approx((10, 20, 40, 60))
    assert from_xyxy((10, 20, 40, 60), "cxcywh", size) == (25, 40, 30, 40)
    assert from_xyxy((10, 20, 40, 60), "xyxy", size, normalized=True) == (0.05, 0.2, 0.2, 0.6)


@pytest.mark.parametrize(
    ("src", "dst", "src_norm", "dst_norm"),
    list(itertools.product(BOX_FORMATS, BOX_FORMATS, (False, True), (False, True))),
)
def test_round_trip_between_all_formats(src, dst, src_norm, dst_norm):
    size = (640, 480)
    xyxy = (12.5, 30.0, 300.25, 410.0)
    box_in_src = from_xyxy(xyxy, src, size, normalized=src_norm)
    converted = from_xyxy(to_xyxy(box_in_src, src, size, normalized=src_norm), dst, size, normalized=dst_norm)
    back = from_xyxy(to_xyxy(converted, dst, size, normalized=dst_norm), src, size, normalized=src_norm)
    assert back == pytest.approx(box_in_src)
    assert to_xyxy(converted, dst, size, normalized=dst_norm) == pytest.approx(xyxy)


def test_unknown_format_is_a_value_error():
    with pytest.raises(ValueError, match="unknown box format 'yxyx'"):
        to_xyxy([1, 2, 3, 4], "yxyx", (10, 10))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,2,3,4", r"must be a list of 4 numbers, got str '1,2,3,4'"),
        (None, r"must be a list of 4 numbers, got NoneType"),
        ({"x": 1}, r"got dict"),
        ([1, 2, 3], r"has 3 values, expected 4: \[1, 2, 3\]"),
        ([1, 2, 3, 4, 5], r"has 5 values, expected 4"),
        ([10, 20], r"2 values \(a point \[x, y\]\?\), expected 4"),
        ([], r"has 0 values"),
        ([[1, 2, 3, 4]], r"nested too deep: element 0 is a list"),
        ([1, 2, [3], 4], r"nested too deep: element 2"),
        ([1, float("nan"), 3, 4], r"element 1 is not finite \(nan\)"),
        ([1, 2, float("inf"), 4], r"element 2 is not finite \(inf\)"),
        ([1, 2, 3, "4"], r"element 3 is a string \('4'\); numeric strings are not accepted"),
        ([True, 2, 3, 4], r"element 0 is a bool \(True\)"),
        ([1, np.bool_(False), 3, 4], r"element 1 is a bool"),
        ([1, 2, None, 4], r"element 2 has type NoneType"),
    ],
)
def test_parse_box_rejects_with_precise_message(value, message):
    with pytest.raises(InvalidBoxError, match=message) as info:
        parse_box(value)
    assert isinstance(info.value, RowError)
    assert row_error_text(info.value).startswith("InvalidBoxError: box ")


def test_parse_box_accepts_numbers_tuples_and_numpy():
    assert parse_box((1, 2.5, 3, 4)) == (1.0, 2.5, 3.0, 4.0)
    assert parse_box(np.array([1, 2, 3, 4], dtype=np.int64)) == (1.0, 2.0, 3.0, 4.0)
    assert parse_box([np.float32(1.5), 2, 3, 4])[0] == 1.5
    assert all(type(v) is float for v in parse_box([1, 2, 3, 4]))


def test_clip_box_clips_partially_outside_boxes():
    assert clip_box((-10, -5, 50, 60), (40, 30)) == (0, 0, 40, 30)
    assert clip_box((5, 5, 10, 10), (40, 30)) == (5, 5, 10, 10)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((10, 10, 10, 20), r"degenerate box: width 0, height 10 \(both must be > 0\)"),
        ((10, 20, 30, 5), r"degenerate box: width 20, height -15"),
        ((50, 5, 60, 10), r"entirely outside the 40x30 image"),
        ((-20, -20, 0, 10), r"entirely outside the 40x30 image"),  # touches the edge: zero area
        ((5, 31, 10, 40), r"entirely outside"),
    ],
)
def test_clip_box_rejects_degenerate_or_fully_outside(box, message):
    with pytest.raises(InvalidBoxError, match=message):
        clip_box(box, (40, 30))


def test_normalize_rounds_to_ndigits():
    assert normalize_xyxy((1, 1, 2, 2), (3, 3)) == [0.333, 0.333, 0.667, 0.667]
    assert normalize_xyxy((1, 1, 2, 2), (3, 3), ndigits=1) == [0.3, 0.3, 0.7, 0.7]


def test_pad_boxes_copies_and_pads():
    rows = [[0.1, 0.2, 0.3, 0.4]]
    padded = pad_boxes(rows, 3)
    assert padded == [[0.1, 0.2, 0.3, 0.4], [0.0] * 4, [0.0] * 4]
    padded[0][0] = 9
    assert rows[0][0] == 0.1
    assert pad_boxes([], 0) == []
    with pytest.raises(ValueError, match="2 boxes exceed max_boxes=1"):
        pad_boxes([[0, 0, 1, 1], [0, 0, 1, 1]], 1)


@pytest.mark.parametrize("raw", [None, [], float("nan"), np.array([])])
def test_parse_boxes_missing_or_empty_gives_no_boxes(raw):
    assert parse_boxes(raw, "xywh", (100, 100)) == BoxParseResult([], [], 0)


def test_parse_boxes_flat_box_is_one_box():
    result = parse_boxes([10, 10, 20, 20], "xywh", (100, 100))
    assert result.boxes_xyxy == [(10, 10, 30, 30)]


def test_parse_boxes_keeps_good_boxes_and_reports_bad_ones():
    raw = [[10, 10, 20, 20], [5, 5, 0, 10], "oops", [90, 90, 50, 50], [200, 200, 10, 10], [1, 2]]
    result = parse_boxes(raw, "xywh", (100, 100))
    assert result.boxes_xyxy == [(10, 10, 30, 30), (90, 90, 100, 100)]
    assert [index for index, _, _ in result.rejected] == [1, 2, 4, 5]
    reasons = {index: reason for index, _, reason in result.rejected}
    assert reasons[1].startswith("box 1 [5, 5, 0, 10] (xywh): degenerate box")
    assert "got str 'oops'" in reasons[2]
    assert "entirely outside the 100x100 image" in reasons[4]
    assert "a point" in reasons[5]
    assert result.rejected[2][1] == [200, 200, 10, 10]


def test_parse_boxes_truncates_valid_boxes_beyond_max():
    raw = [[0, 0, 1, 1], [-5, -5, 1, 1], [1, 1, 1, 1], [2, 2, 1, 1], [3, 3, 1, 1]]
    result = parse_boxes(raw, "xywh", (10, 10), max_boxes=2)
    assert result.boxes_xyxy == [(0, 0, 1, 1), (1, 1, 2, 2)]
    assert result.truncated == 2
    assert len(result.rejected) == 1  # the fully-outside box is rejected, not truncated


def test_parse_boxes_normalized_and_numpy_rows():
    raw = np.array([np.array([0.5, 0.5, 0.2, 0.4])], dtype=object)  # as read back from parquet
    result = parse_boxes(raw, "cxcywh", (200, 100), normalized=True)
    assert result.boxes_xyxy == [pytest.approx((80, 30, 120, 70))]


def test_parse_boxes_hints_at_pixel_values_marked_normalized():
    result = parse_boxes([[196, 104, 310, 495]], "xywh", SEED_SIZE, normalized=True)
    assert result.boxes_xyxy == []
    assert "are these pixel coordinates?" in result.rejected[0][2]


@pytest.mark.parametrize("raw", ["[[1, 2, 3, 4]]", 5, {"bbox": [1, 2, 3, 4]}])
def test_parse_boxes_non_list_cell_raises(raw):
    with pytest.raises(InvalidBoxError, match="boxes must be a list of boxes, got"):
        parse_boxes(raw, "xywh", (100, 100))


def test_area_and_iou():
    assert box_area((0, 0, 10, 5)) == 50
    assert box_area((5, 5, 0, 0)) == 0
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0
    assert not math.isnan(iou((1, 1, 1, 1), (1, 1, 1, 1)))
