"""Greedy non-maximum suppression over pixel xyxy boxes (class-agnostic)."""

from __future__ import annotations

from collections.abc import Sequence

from dataflow_mm.imaging.bbox import iou


def non_max_suppression(
    boxes: Sequence[Sequence[float]], scores: Sequence[float], iou_threshold: float
) -> list[tuple[int, int | None, float]]:
    """For each box, in order of decreasing score (ties: input order): ``(index, suppressor, iou)``.

    ``suppressor`` is None for a kept box, else the index of the higher-scored kept box it overlaps
    with IoU above ``iou_threshold`` (``iou`` is that overlap).
    """
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    result: list[tuple[int, int | None, float]] = []
    for index in order:
        overlaps = [(iou(boxes[index], boxes[k]), k) for k in kept]
        worst = max(overlaps, default=(0.0, None))
        if worst[1] is not None and worst[0] > iou_threshold:
            result.append((index, worst[1], worst[0]))
        else:
            kept.append(index)
            result.append((index, None, worst[0]))
    return result


def kept_indices(boxes: Sequence[Sequence[float]], scores: Sequence[float], iou_threshold: float) -> list[int]:
    """The indices NMS keeps, highest score first."""
    return [index for index, suppressor, _ in non_max_suppression(boxes, scores, iou_threshold) if suppressor is None]
