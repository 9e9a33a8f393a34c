"""Bounding boxes: the one module that parses, converts, clips and normalizes them.

Formats (``fmt``), all in the coordinates of the image *as displayed* (EXIF orientation applied):

* ``"xywh"``: top-left corner + width/height (the region-caption seed's ``bbox`` column);
* ``"xyxy"``: top-left and bottom-right corners (the internal form of every helper here);
* ``"cxcywh"``: centre + width/height (Data-Juicer's Img-Diff boxes).

Each is in pixels, or in 0–1 fractions of the image width/height with ``normalized=True``.
Pixel edges are continuous coordinates: ``[0, 0, W, H]`` is the whole image.

The clipping rule, used by every operator (:func:`clip_box`):

* a box partially outside the image is **clipped** to the image;
* a **degenerate** box (width or height <= 0 before clipping) is **rejected**;
* a box lying **entirely outside** the image (zero area after clipping) is **rejected**.

Rejections raise :class:`~dataflow_mm.common.errors.InvalidBoxError`; :func:`parse_boxes` collects them
per box instead, so one bad box does not cost a row its good boxes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dataflow_mm.common.errors import InvalidBoxError

BoxFormat = Literal["xywh", "xyxy", "cxcywh"]
BOX_FORMATS: tuple[str, ...] = ("xywh", "xyxy", "cxcywh")
Box = tuple[float, float, float, float]
ZERO_ROW: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

_MAX_REPR = 80


def _short(value: Any) -> str:
    """A repr of ``value`` short enough for a row's error field."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _as_sequence(value: Any) -> Any:
    """numpy arrays (as read from parquet) become lists; anything else is returned as is."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None and hasattr(value, "ndim"):
        return tolist()
    return value


def _is_number(value: Any) -> bool:
    """True for real numbers (int, float, numpy scalars), False for bools."""
    if type(value) in (int, float):  # the common case, without the ABC check
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _overflows(value: Any) -> bool:
    """True for an integer beyond float range (``10**400``): it has no float value at all."""
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _check_format(fmt: str) -> None:
    if fmt not in BOX_FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; expected one of {', '.join(BOX_FORMATS)}")


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive (W, H), got {image_size!r}")
    return width, height


def parse_box(value: Any) -> Box:
    """Validate one raw box: a list/tuple of exactly 4 finite numbers (strings are refused)."""
    if type(value) is tuple and len(value) == 4 and all(type(v) is float and math.isfinite(v) for v in value):
        return value  # already a checked box (every helper here returns these): validated once per box, not 4 times
    value = _as_sequence(value)
    if not isinstance(value, (list, tuple)):
        raise InvalidBoxError(f"box must be a list of 4 numbers, got {type(value).__name__} {_short(value)}")
    items = [_as_sequence(v) for v in value]
    for i, item in enumerate(items):
        if isinstance(item, (list, tuple)):
            raise InvalidBoxError(
                f"box is nested too deep: element {i} is a {type(item).__name__} ({_short(item)}), "
                f"expected 4 numbers in {_short(value)}"
            )
    if len(items) == 2 and all(_is_number(v) for v in items):
        raise InvalidBoxError(f"box has 2 values (a point [x, y]?), expected 4: {_short(value)}")
    if len(items) != 4:
        raise InvalidBoxError(f"box has {len(items)} values, expected 4: {_short(value)}")
    for i, item in enumerate(items):
        if isinstance(item, (bool, np.bool_)):
            raise InvalidBoxError(f"box element {i} is a bool ({item!r}), expected a number: {_short(value)}")
        if isinstance(item, (str, bytes)):
            raise InvalidBoxError(
                f"box element {i} is a string ({item!r}); numeric strings are not accepted: {_short(value)}"
            )
        if not _is_number(item):
            raise InvalidBoxError(
                f"box element {i} has type {type(item).__name__} ({_short(item)}), expected a number: {_short(value)}"
            )
        if _overflows(item):
            raise InvalidBoxError(f"box element {i} is too large for a float ({_short(item)}): {_short(value)}")
        if not math.isfinite(item):
            raise InvalidBoxError(f"box element {i} is not finite ({item!r}): {_short(value)}")
    x0, y0, x1, y1 = (float(v) for v in items)
    return (x0, y0, x1, y1)


def to_xyxy(box: Any, fmt: BoxFormat, image_size: tuple[int, int], normalized: bool = False) -> Box:
    """Convert a box in ``fmt`` (pixels, or 0–1 with ``normalized``) to pixel xyxy (not clipped)."""
    _check_format(fmt)
    width, height = _check_size(image_size)
    a, b, c, d = parse_box(box)
    if normalized:
        a, b, c, d = a * width, b * height, c * width, d * height
    if fmt == "xyxy":
        return (a, b, c, d)
    if fmt == "xywh":
        return (a, b, a + c, b + d)
    return (a - c / 2, b - d / 2, a + c / 2, b + d / 2)


def from_xyxy(box: Any, fmt: BoxFormat, image_size: tuple[int, int], normalized: bool = False) -> Box:
    """Convert a pixel xyxy box to ``fmt`` (pixels, or 0–1 fractions with ``normalized``)."""
    _check_format(fmt)
    width, height = _check_size(image_size)
    x0, y0, x1, y1 = parse_box(box)
    if fmt == "xyxy":
        out = (x0, y0, x1, y1)
    elif fmt == "xywh":
        out = (x0, y0, x1 - x0, y1 - y0)
    else:
        out = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
    if normalized:
        out = (out[0] / width, out[1] / height, out[2] / width, out[3] / height)
    return out


def clip_box(xyxy: Any, image_size: tuple[int, int]) -> Box:
    """Clip a pixel xyxy box to the image; reject degenerate or fully-outside boxes (module rule)."""
    width, height = _check_size(image_size)
    x0, y0, x1, y1 = parse_box(xyxy)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise InvalidBoxError(
            f"degenerate box: width {x1 - x0:g}, height {y1 - y0:g} (both must be > 0) "
            f"in xyxy {_short([x0, y0, x1, y1])}"
        )
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        raise InvalidBoxError(f"box lies entirely outside the {width}x{height} image (xyxy {_short([x0, y0, x1, y1])})")
    return (cx0, cy0, cx1, cy1)


def normalize_xyxy(xyxy: Any, image_size: tuple[int, int], ndigits: int = 3) -> list[float]:
    """``[x0/W, y0/H, x1/W, y1/H]`` rounded to ``ndigits`` (the seed's ``normalized_bbox`` rows)."""
    width, height = _check_size(image_size)
    x0, y0, x1, y1 = parse_box(xyxy)
    return [round(x0 / width, ndigits), round(y0 / height, ndigits), round(x1 / width, ndigits),
            round(y1 / height, ndigits)]  # fmt: skip


def pad_boxes(boxes: list[list[float]], max_boxes: int) -> list[list[float]]:
    """Copy of ``boxes`` followed by ``[0.0, 0.0, 0.0, 0.0]`` rows up to ``max_boxes`` rows."""
    if len(boxes) > max_boxes:
        raise ValueError(f"{len(boxes)} boxes exceed max_boxes={max_boxes}; truncate first (parse_boxes)")
    return [list(b) for b in boxes] + [list(ZERO_ROW) for _ in range(max_boxes - len(boxes))]


@dataclass
class BoxParseResult:
    """Outcome of :func:`parse_boxes`.

    ``boxes_xyxy``: valid clipped pixel boxes in input order; ``rejected``: ``(index, raw, reason)``
    per invalid box; ``truncated``: boxes not read because ``max_boxes`` valid ones came before them.
    """

    boxes_xyxy: list[Box] = field(default_factory=list)
    rejected: list[tuple[int, Any, str]] = field(default_factory=list)
    truncated: int = 0


def _is_missing(raw: Any) -> bool:
    """None or a float NaN (how pandas marks a missing cell)."""
    return raw is None or (isinstance(raw, float) and math.isnan(raw))


def _box_list(raw: Any) -> list[Any]:
    """The list of raw boxes in a cell: a flat list of scalars is one box."""
    raw = _as_sequence(raw)
    if not isinstance(raw, (list, tuple)):
        raise InvalidBoxError(f"boxes must be a list of boxes, got {type(raw).__name__} {_short(raw)}")
    items = [_as_sequence(v) for v in raw]
    if items and not any(isinstance(v, (list, tuple)) for v in items):
        return [list(items)]
    return items


def parse_boxes(
    raw: Any,
    fmt: BoxFormat,
    image_size: tuple[int, int],
    normalized: bool = False,
    max_boxes: int | None = None,
) -> BoxParseResult:
    """Parse a cell of boxes into valid clipped pixel xyxy boxes, collecting per-box rejections.

    ``None``/NaN/``[]`` give no boxes; a flat ``[x, y, w, h]`` is one box; any other non-list
    raises :class:`InvalidBoxError` (the whole cell is unusable).
    """
    _check_format(fmt)
    _check_size(image_size)
    result = BoxParseResult()
    if _is_missing(raw):
        return result
    items = _box_list(raw)
    for index, item in enumerate(items):
        if max_boxes is not None and len(result.boxes_xyxy) >= max_boxes:
            result.truncated = len(items) - index  # not read: a row of 10^6 boxes costs max_boxes, not 10^6
            break
        try:
            box = clip_box(to_xyxy(item, fmt, image_size, normalized), image_size)
        except InvalidBoxError as exc:
            result.rejected.append((index, item, _reason(index, item, fmt, normalized, exc)))
            continue
        result.boxes_xyxy.append(box)
    return result


def _reason(index: int, item: Any, fmt: str, normalized: bool, exc: InvalidBoxError) -> str:
    """Rejection text: which box, in which format, why (with a hint for pixel values marked 0–1)."""
    kind = f"{fmt}, normalized" if normalized else fmt
    reason = f"box {index} {_short(item)} ({kind}): {exc}"
    values = item if isinstance(item, (list, tuple)) else ()
    if normalized and any(_is_number(v) and abs(v) > 1 for v in values):
        reason += "; values above 1 with normalized=True: are these pixel coordinates?"
    return reason


def box_area(xyxy: Any) -> float:
    """Area of an xyxy box (0 for an empty one)."""
    x0, y0, x1, y1 = xyxy
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def iou(a: Any, b: Any) -> float:
    """Intersection over union of two xyxy boxes (0 when both are empty)."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0
