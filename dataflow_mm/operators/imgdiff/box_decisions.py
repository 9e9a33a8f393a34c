"""What the Img-Diff operators share: column names, the per-box decision record, image pairs in memory.

Every Img-Diff step works on a row's list of candidate boxes. The list lives in one column
(``bbox_decisions`` by default), one JSON object per candidate box, in input order::

    {"index": 0, "bbox": [cx, cy, w, h], "bbox_xyxy": [x0, y0, x1, y1],
     "region_caption1": "...", "region_caption2": "...",
     "itm_score1": 0.83, "itm_score2": 0.77, "caption_similarity": 0.41,
     "difference_caption": "...", "difference_image": null,
     "kept": true, "dropped_at": null, "drop_reason": null}

``bbox`` is the box as given (in the declared format), ``bbox_xyxy`` the pixel box clipped to
image 1. A step only looks at boxes still ``kept``; when it drops one it sets ``kept`` false,
``dropped_at`` (the step) and ``drop_reason`` (why, with the numbers). The scores that decided
each box stay in the record, so every decision can be audited from the output table.

A model request that failed for a box (``PromptTooLongError``, ``ServingError``, ...) is not a
decision about the box: it drops the box with ``error`` set to the request's error, and when no
box of a row could be processed because every request failed, the row gets that error too
(``request_failure``). The step metrics count both (``box_errors_<step>``).

Images are decoded in memory only (no temp files). Image 2 is resized to image 1's size, as in
the original, so one box addresses the same area in both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from dataflow_mm.common.checks import check_choice, check_int, check_number
from dataflow_mm.common.errors import ERROR_COLUMN, ConfigError, RowError, UserError, row_error_text
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.report_view import ReportView
from dataflow_mm.imaging.bbox import BOX_FORMATS, parse_boxes
from dataflow_mm.imaging.loading import load_image
from dataflow_mm.serving.base import SamplingParams, VLMServing
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.media import resolve_media_path

log = get_logger("operators.imgdiff")

IMAGE1_KEY = "image_path1"
IMAGE2_KEY = "image_path2"
BBOX_KEY = "bboxes"
DECISIONS_KEY = "bbox_decisions"
CAPTION1_KEY = "region_caption1"
CAPTION2_KEY = "region_caption2"
DIFFERENCE_KEY = "bbox_difference_captions"
DIFFERENCE_IMAGES_KEY = "difference_images"
SOURCE_KEY = "bbox_source"
# The image-pair keys every Img-Diff operator that reads images declares first (in its ``key_spec``).
PAIR_KEYS = {"input_image1_key": IMAGE1_KEY, "input_image2_key": IMAGE2_KEY}
# The box keys of the operators that read a row's boxes and write the boxes they keep or find.
BOX_KEYS = {"input_bbox_key": BBOX_KEY, "output_bbox_key": BBOX_KEY}
# What the report's Img-Diff page shows, declared once for every Img-Diff operator (their ``report_view``).
IMGDIFF_REPORT_VIEW = ReportView(
    "imgdiff",
    roles={
        "image1": IMAGE1_KEY,
        "image2": IMAGE2_KEY,
        "boxes": (BBOX_KEY, "bbox", "boxes"),
        "caption1": CAPTION1_KEY,
        "caption2": CAPTION2_KEY,
        "diff": DIFFERENCE_KEY,
        "decisions": DECISIONS_KEY,
    },
    identifies=((IMAGE1_KEY, IMAGE2_KEY), (DIFFERENCE_KEY,)),
)

# Where a box was dropped (the ``dropped_at`` values), in pipeline order.
DROP_PARSE = "parse"
DROP_AREA = "area"
DROP_REGION_CAPTION = "region_caption"
DROP_ITM = "image_text_matching"
DROP_SIMILARITY = "caption_similarity"
DROP_DIFFERENCE = "difference_caption"
ALL_STEPS = (DROP_PARSE, DROP_AREA, DROP_REGION_CAPTION, DROP_ITM, DROP_SIMILARITY, DROP_DIFFERENCE)
# The steps that send model requests (whose failures are errors, counted per box).
REQUEST_STEPS = (DROP_REGION_CAPTION, DROP_DIFFERENCE)

ImagePair = tuple[Image.Image, Image.Image]


def check_bbox_format(bbox_format: str, owner: str = "") -> str:
    """``bbox_format`` when it is one of ``BOX_FORMATS`` (else ``ConfigError`` naming them)."""
    return check_choice(f"{owner}.bbox_format" if owner else "bbox_format", bbox_format, BOX_FORMATS)


def check_score_range(name: str, min_score: float, max_score: float) -> None:
    """Finite ``min_score <= max_score`` (else ``ConfigError`` naming the filter)."""
    check_number(f"{name} min_score", min_score)
    check_number(f"{name} max_score", max_score)
    if min_score > max_score:
        raise ConfigError(f"{name}: need min_score <= max_score, got [{min_score}, {max_score}]")


def score_filter_range(
    owner: str, what: str, min_score: float, max_score: float, batch_size: int
) -> tuple[float, float]:
    """A score filter's checked ``(min_score, max_score)`` as floats; its model's ``batch_size`` is checked too."""
    check_score_range(what, min_score, max_score)
    check_int(f"{owner}.batch_size", batch_size, 1)
    return float(min_score), float(max_score)


def in_range(value: float, low: float, high: float) -> bool:
    return low <= value <= high


def is_missing(raw: Any) -> bool:
    """None, NaN or an empty list: the row carries no boxes."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return True
    return hasattr(raw, "__len__") and not isinstance(raw, (str, bytes)) and len(raw) == 0


def _as_list(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if tolist is not None and hasattr(value, "ndim") else value


# Candidate boxes read per row (Img-Diff's --max_input_boxes): a row with 10^6 boxes would otherwise hold
# 10^6 decisions and send 2 * 10^6 requests. The rest are not read; they are counted in the run summary.
MAX_INPUT_BOXES = 50


def input_box_count(raw: Any) -> int:
    """How many boxes a cell holds: its length, 1 for a flat box, 0 for none or for a cell that is not a list."""
    raw = _as_list(raw)
    if not isinstance(raw, (list, tuple)) or not raw:
        return 0
    return len(raw) if isinstance(_as_list(raw[0]), (list, tuple)) else 1


def is_all_zero(raw: Any) -> bool:
    """Every box is ``[0, 0, 0, 0]``: Data-Juicer's marker for "no difference area" (a flat box counts too)."""
    raw = _as_list(raw)
    if not isinstance(raw, (list, tuple)) or not raw:
        return False
    boxes = [_as_list(b) for b in raw]
    if not any(isinstance(b, (list, tuple)) for b in boxes):
        boxes = [boxes]
    try:
        return all(isinstance(b, (list, tuple)) and all(float(v) == 0.0 for v in b) for b in boxes)
    except (TypeError, ValueError, OverflowError):
        return False


def has_no_boxes(raw: Any) -> bool:
    """The seed's "no boxes": missing, empty, or all zero."""
    return is_missing(raw) or is_all_zero(raw)


def plain_numbers(box: Sequence[Any], ndigits: int = 2) -> list[float | int]:
    """JSON-friendly numbers: integers stay integers, floats are rounded."""
    out: list[float | int] = []
    for v in box:
        f = float(v)
        out.append(int(f) if f.is_integer() else round(f, ndigits))
    return out


def new_decision(index: int, raw_box: Any) -> dict[str, Any]:
    raw_box = _as_list(raw_box)
    try:
        shown = plain_numbers(raw_box, 4) if isinstance(raw_box, (list, tuple)) else raw_box
    except (TypeError, ValueError, OverflowError):
        shown = str(raw_box)[:200]
    return {
        "index": index,
        "bbox": shown,
        "bbox_xyxy": None,
        "region_caption1": None,
        "region_caption2": None,
        "itm_score1": None,
        "itm_score2": None,
        "caption_similarity": None,
        "difference_caption": None,
        "difference_image": None,
        "kept": True,
        "dropped_at": None,
        "drop_reason": None,
        "error": None,
    }


def drop(decision: dict[str, Any], step: str, reason: str) -> None:
    decision["kept"] = False
    decision["dropped_at"] = step
    decision["drop_reason"] = reason


def fail(decision: dict[str, Any], step: str, what: str, error: str) -> None:
    """Drop a box whose model request failed: ``error`` holds the request's error (``"<ErrorClass>: ..."``)."""
    if decision.get("kept"):
        drop(decision, step, f"{what} failed: {error}")
        decision["error"] = error


def request_failure(sent: Sequence[dict[str, Any]], what: str) -> str | None:
    """The row's error when every box sent to the model failed (None when one succeeded or none was sent)."""
    if not sent or any(not d.get("error") for d in sent):
        return None
    first = str(sent[0]["error"])
    return f"{first} (all {len(sent)} {what} request(s) of the row failed)"


def kept(decisions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in decisions if d.get("kept")]


def candidate_decisions(
    raw_boxes: Any, bbox_format: str, normalized: bool, image_size: tuple[int, int], max_boxes: int | None = None
) -> list[dict[str, Any]]:
    """One decision per candidate box; boxes that do not parse or lie outside image 1 are dropped at "parse".

    No boxes (missing, empty, all zero) give ``[]``. A cell that is not a list of boxes raises InvalidBoxError.
    Of a cell with more than ``max_boxes`` boxes only the first ``max_boxes`` are read (the rest get no decision).
    """
    if has_no_boxes(raw_boxes):
        return []
    if max_boxes is not None and input_box_count(raw_boxes) > max_boxes:
        raw_boxes = list(_as_list(raw_boxes)[:max_boxes])
    parsed = parse_boxes(raw_boxes, bbox_format, image_size, normalized)  # type: ignore[arg-type]
    raw_list = _as_list(raw_boxes)
    items = [_as_list(v) for v in raw_list]
    if items and not any(isinstance(v, (list, tuple)) for v in items):
        items = [items]
    rejected = {index: reason for index, _, reason in parsed.rejected}
    valid = iter(parsed.boxes_xyxy)
    decisions = []
    for index, item in enumerate(items):
        decision = new_decision(index, item)
        if index in rejected:
            drop(decision, DROP_PARSE, rejected[index])
        else:
            decision["bbox_xyxy"] = plain_numbers(next(valid), 2)
        decisions.append(decision)
    return decisions


def copy_decisions(value: Any) -> list[dict[str, Any]]:
    """A row's decisions as a fresh list of dicts (cells read from parquet may be numpy arrays)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [dict(d) for d in _as_list(value)]


def step_counts(
    step: str, decisions_per_row: Sequence[Sequence[dict[str, Any]]], steps: Sequence[str] = ALL_STEPS
) -> tuple[int, int]:
    """(boxes this step saw, boxes it kept): a box is seen by every step up to the one that dropped it,
    and kept by every step before that one (so the fused operator, which sees all drops at once, counts
    the same as the step-by-step pipeline). ``steps`` is the order of the steps that drop boxes."""
    order = steps.index(step)
    seen = kept_count = 0
    for decisions in decisions_per_row:
        for d in decisions:
            at = d.get("dropped_at")
            dropped = -1 if d.get("kept") or at not in steps else steps.index(at)
            if dropped == -1 or dropped > order:
                seen += 1
                kept_count += 1
            elif dropped == order:
                seen += 1
    return seen, kept_count


def describe_drops(step: str, decisions_per_row: Sequence[Sequence[dict[str, Any]]]) -> str:
    """One log line: how many boxes this step saw, kept and dropped."""
    seen, kept_count = step_counts(step, decisions_per_row)
    return f"{step}: {seen} boxes in, {kept_count} kept, {seen - kept_count} dropped"


def decision_metrics(frame: pd.DataFrame, key: str, steps: Sequence[str]) -> dict[str, float]:
    """Per-step box counts for the run summary: ``boxes_after_<step>`` out of ``..._total`` (a keep rate)."""
    if key not in frame.columns:
        return {}
    rows = [copy_decisions(v) for v in frame[key].tolist()]
    metrics: dict[str, float] = {}
    for step in steps:
        seen, kept_count = step_counts(step, rows)
        metrics[f"boxes_after_{step}"] = kept_count
        metrics[f"boxes_after_{step}_total"] = seen
        if step in REQUEST_STEPS:
            metrics[f"box_errors_{step}"] = sum(
                1 for row in rows for d in row if d.get("dropped_at") == step and d.get("error")
            )
    if DROP_DIFFERENCE in steps:
        metrics["pairs_with_differences"] = sum(1 for row in rows if kept(row))
        metrics["pairs_with_differences_total"] = len(rows)
    return metrics


class PairLoader:
    """Loads rows' image pairs in memory (image 2 resized to image 1's size), optionally memoized.

    The fused operator gives its steps one shared memo per chunk, so each image is decoded once.
    Each image cell may hold any form :func:`resolve_media_path` reads; of a list, the first image is used.
    """

    def __init__(self) -> None:
        self.media_root: Path | None = None
        self.media_cache: Path | None = None
        self.download_timeout: float | None = None
        self.memo: dict[tuple[str, str], ImagePair | RowError] | None = None
        self.num_workers: int | None = None

    def bind(self, storage: FileStorage) -> None:
        """Before the first chunk: image cells resolve against the storage's media root and cache."""
        self.media_root = storage.media_root
        self.media_cache = storage.media_cache
        self.download_timeout = getattr(storage, "download_timeout", None)

    def pairs_at(
        self, frame: pd.DataFrame, keys: dict[str, Any], positions: Sequence[int], errors: list[Any]
    ) -> dict[int, ImagePair]:
        """The image pairs of the rows at ``positions`` (under ``keys``' image columns), loaded in parallel,
        by position; a row whose images cannot be loaded gets the error in ``errors`` instead."""
        names1, names2 = frame[keys["input_image1_key"]].tolist(), frame[keys["input_image2_key"]].tolist()
        loaded = self.load_pairs([names1[p] for p in positions], [names2[p] for p in positions])
        pairs: dict[int, ImagePair] = {}
        for position, pair in zip(positions, loaded, strict=True):
            if isinstance(pair, RowError):
                set_row_errors(errors, position, pair)
            else:
                pairs[position] = pair
        return pairs

    def load_pairs(self, values1: Sequence[Any], values2: Sequence[Any]) -> list[ImagePair | RowError]:
        workers = self.num_workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.load_pair, values1, values2))

    def load_pair(self, value1: Any, value2: Any) -> ImagePair | RowError:
        key = (str(value1), str(value2))
        if self.memo is not None and key in self.memo:
            return self.memo[key]
        try:
            first = load_image(resolve_media_path(value1, self.media_root, self.media_cache, self.download_timeout))
            second = load_image(resolve_media_path(value2, self.media_root, self.media_cache, self.download_timeout))
            if second.size != first.size:
                second = second.resize(first.size, Image.Resampling.BICUBIC)
            result: ImagePair | RowError = (first, second)
        except RowError as exc:
            result = exc
        if self.memo is not None:
            self.memo[key] = result
        return result


def rows_with_kept_boxes(decisions_per_row: Sequence[Sequence[dict[str, Any]]]) -> list[int]:
    """The positions of the rows that still have a kept box (the only ones whose images a later step needs)."""
    return [position for position, decisions in enumerate(decisions_per_row) if kept(decisions)]


def set_row_errors(errors: list[Any], position: int, exc: RowError | str) -> None:
    errors[position] = exc if isinstance(exc, str) else row_error_text(exc)


def decisions_column(frame: pd.DataFrame, key: str) -> list[list[dict[str, Any]]]:
    if key not in frame.columns:
        raise UserError(f"column '{key}' is missing: run ImgDiffRegionCaptioner (or the fused operator) first")
    return [copy_decisions(v) for v in frame[key].tolist()]


def error_list(frame: pd.DataFrame) -> list[Any]:
    return frame[ERROR_COLUMN].tolist() if ERROR_COLUMN in frame.columns else [None] * len(frame)


def vlm_provenance(serving: VLMServing, sampling: SamplingParams | None) -> dict[str, Any]:
    """What a VLM step records: the serving's own description, with the step's sampling when it overrides it."""
    info = serving.describe()
    if sampling is not None:
        info["sampling"] = sampling.to_dict()
    return info
