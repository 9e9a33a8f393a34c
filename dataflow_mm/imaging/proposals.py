"""Classical region proposals: boxes for rows without boxes, and boxes around edits in image pairs.

Both work on a copy downscaled to about ``WORK_SIZE`` px (fast on any image, robust to JPEG noise):
build a foreground mask, clean it with morphology, take connected components
(``scipy.ndimage.label``), scale their boxes back to the original pixels, drop tiny ones, merge
boxes overlapping with IoU > 0.5 and return at most ``max_boxes`` pixel xyxy boxes, largest first.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from dataflow_mm.imaging.bbox import Box, box_area, iou
from dataflow_mm.imaging.loading import to_rgb

WORK_SIZE = 256
UNIFORM_RANGE = 8.0  # an image whose every channel varies by at most this (0-255) is uniform
MERGE_IOU = 0.5
_BORDER = 2  # border ring (work pixels) that estimates the background colour
_PLAIN_SPREAD = 12.0  # border colour spread below which the background counts as plain
_MIN_COLOR_DISTANCE = 25.0
_STRUCTURE = np.ones((3, 3), dtype=bool)


def propose_boxes(image: Image.Image, max_boxes: int = 10, min_area_ratio: float = 0.001) -> list[Box]:
    """Boxes around the salient regions of ``image`` (pixel xyxy, largest first).

    The background colour is the median of the image border; the foreground is what differs
    from it, plus strong edges when the border is not plain (photos). A uniform image gives
    ``[]``; any other image gives at least one box (the whole image if nothing stands out).
    """
    rgb = to_rgb(image)
    pixels, scale = _downscale(rgb)
    if _is_uniform(pixels):
        return []
    mask = _fill(_foreground_mask(pixels.astype(np.float32)))
    boxes = _component_boxes(mask, scale, rgb.size, min_area_ratio)
    boxes = _merge(boxes)[:max_boxes]
    if not boxes and max_boxes > 0:
        return [(0.0, 0.0, float(rgb.width), float(rgb.height))]
    return boxes


def difference_boxes(
    image1: Image.Image,
    image2: Image.Image,
    max_boxes: int = 5,
    threshold: float = 40.0,
    min_area_ratio: float = 0.0005,
) -> list[Box]:
    """Boxes (pixel xyxy of ``image1``, largest first) around where two aligned images differ.

    ``image2`` is resized to ``image1``'s size. A work pixel differs when its RGB distance
    exceeds ``threshold`` (0–441) and three times the median distance (global shifts such as
    re-encoding noise raise the bar). Identical images give ``[]``.
    """
    first = to_rgb(image1)
    second = to_rgb(image2)
    if second.size != first.size:
        second = second.resize(first.size, Image.Resampling.BILINEAR)
    pixels1, scale = _downscale(first)
    pixels2, _ = _downscale(second)
    work1, work2 = pixels1.astype(np.float32), pixels2.astype(np.float32)
    distance = ndimage.median_filter(np.linalg.norm(work1 - work2, axis=2), size=3)
    limit = max(threshold, 3.0 * float(np.median(distance)))
    mask = _fill(distance > limit)
    boxes = _component_boxes(mask, scale, first.size, min_area_ratio)
    return _merge(boxes)[:max_boxes]


def _downscale(image: Image.Image) -> tuple[np.ndarray, tuple[float, float]]:
    """uint8 RGB array of ``image`` with its long side at most ``WORK_SIZE``, and the (sx, sy) scale back."""
    width, height = image.size
    factor = min(1.0, WORK_SIZE / max(width, height))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = image if size == image.size else image.resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8), (width / size[0], height / size[1])


def _is_uniform(pixels: np.ndarray) -> bool:
    """Whether every channel of the uint8 work image varies by at most ``UNIFORM_RANGE``.

    Min and max per channel on the uint8 array (one pass each, no float copy): ``np.ptp`` on the
    float image was 14.7% of the non-serving CPU of a run.
    """
    flat = pixels.reshape(-1, 3)
    spread = flat.max(axis=0).astype(np.int16) - flat.min(axis=0)
    return int(spread.max()) <= UNIFORM_RANGE


def _foreground_mask(work: np.ndarray) -> np.ndarray:
    """Pixels far from the border's median colour; plus strong edges when the border is busy."""
    ring = _border_pixels(work)
    background = np.median(ring, axis=0)
    spread = float(np.percentile(np.linalg.norm(ring - background, axis=1), 90))
    distance = np.linalg.norm(work - background, axis=2)
    mask = distance > max(_MIN_COLOR_DISTANCE, 2.0 * spread)
    if spread >= _PLAIN_SPREAD:
        mask |= _edge_mask(work)
    return mask


def _border_pixels(work: np.ndarray) -> np.ndarray:
    b = min(_BORDER, max(1, min(work.shape[:2]) // 4))
    parts = [work[:b], work[-b:], work[:, :b], work[:, -b:]]
    return np.concatenate([p.reshape(-1, 3) for p in parts])


def _edge_mask(work: np.ndarray) -> np.ndarray:
    """Strong Sobel edges of the lightly blurred grayscale (top 10%, and at least a clear step)."""
    gray = ndimage.gaussian_filter(work.mean(axis=2), sigma=1.0)
    magnitude = np.hypot(ndimage.sobel(gray, axis=0), ndimage.sobel(gray, axis=1))
    return magnitude > max(60.0, float(np.percentile(magnitude, 90)))


def _fill(mask: np.ndarray) -> np.ndarray:
    """Bridge small gaps, fill holes, then remove specks and thin lines: one component per object."""
    mask = ndimage.binary_closing(mask, structure=_STRUCTURE, iterations=2, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_opening(mask, structure=_STRUCTURE)


def _component_boxes(
    mask: np.ndarray, scale: tuple[float, float], size: tuple[int, int], min_area_ratio: float
) -> list[Box]:
    """Pixel xyxy boxes of the connected components of ``mask``, at least ``min_area_ratio`` of the image."""
    labels, _count = ndimage.label(mask, structure=_STRUCTURE)
    sx, sy = scale
    width, height = size
    min_area = min_area_ratio * width * height
    boxes = []
    for rows, cols in ndimage.find_objects(labels):
        box = (
            max(0.0, cols.start * sx),
            max(0.0, rows.start * sy),
            min(float(width), cols.stop * sx),
            min(float(height), rows.stop * sy),
        )
        if box_area(box) >= min_area and box_area(box) > 0:
            boxes.append(box)
    return boxes


def _merge(boxes: list[Box], threshold: float = MERGE_IOU) -> list[Box]:
    """Greedy union of boxes overlapping with IoU > ``threshold``; result sorted by area, largest first."""
    merged: list[Box] = []
    for box in sorted(boxes, key=box_area, reverse=True):
        for i, kept in enumerate(merged):
            if iou(box, kept) > threshold:
                merged[i] = (min(box[0], kept[0]), min(box[1], kept[1]), max(box[2], kept[2]),
                             max(box[3], kept[3]))  # fmt: skip
                break
        else:
            merged.append(box)
    return sorted(merged, key=box_area, reverse=True)
