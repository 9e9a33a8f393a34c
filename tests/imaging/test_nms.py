"""Greedy NMS: the best-scored of overlapping boxes stays, and each dropped box names the one that beat it."""

from __future__ import annotations

from dataflow_mm.imaging.nms import kept_indices, non_max_suppression


def test_overlapping_boxes_keep_the_best_scored() -> None:
    boxes = [(0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60), (0, 0, 10, 10)]
    scores = [0.5, 0.9, 0.1, 0.5]
    assert kept_indices(boxes, scores, 0.5) == [1, 2]
    by_index = {i: (s, round(o, 2)) for i, s, o in non_max_suppression(boxes, scores, 0.5)}
    assert by_index[0] == (1, 0.68) and by_index[3] == (1, 0.68) and by_index[2][0] is None


def test_a_lower_overlap_than_the_threshold_keeps_both() -> None:
    assert kept_indices([(0, 0, 10, 10), (5, 0, 15, 10)], [1.0, 0.5], 0.5) == [0, 1]  # IoU 1/3
