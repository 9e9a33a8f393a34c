"""The six steps of the Img-Diff difference-area generator, each over all active rows of a chunk at once.

Each model is called once per step on all of the chunk's items (the scorers cut that into forward
passes); a row that ends early gets its ``reason`` (no difference) and leaves the later steps.
Every candidate's scores, and the step that dropped it, stay in its decision record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from dataflow_mm.imaging.bbox import from_xyxy
from dataflow_mm.imaging.crop import crop_box
from dataflow_mm.imaging.nms import non_max_suppression
from dataflow_mm.operators.imgdiff.box_decisions import ImagePair, drop, in_range, kept, plain_numbers
from dataflow_mm.operators.imgdiff.changed_nouns import changed_nouns
from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from dataflow_mm.scoring.object_detection import Detection, OwlDetector

# Where a candidate was dropped (``dropped_at``), in order.
STEP_ITM = "image_text_matching"
STEP_CROP_SIMILARITY = "crop_pair_similarity"
STEP_NMS = "nms"
CANDIDATE_STEPS = (STEP_ITM, STEP_CROP_SIMILARITY, STEP_NMS)


@dataclass
class AreaRow:
    """One generated row while its chunk goes through the steps; ``reason`` set = no difference, stop."""

    position: int
    pair: ImagePair
    caption1: str
    caption2: str
    pair_similarity: float | None = None
    nouns: dict[str, list[str]] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    crops: list[tuple[Image.Image, Image.Image]] = field(default_factory=list)
    reason: str | None = None


def drop_summary(decisions: list[dict[str, Any]]) -> str:
    """``"3 candidates; dropped at image_text_matching x2, nms x1"``."""
    counts: dict[str, int] = {}
    for d in decisions:
        if not d["kept"]:
            counts[d["dropped_at"]] = counts.get(d["dropped_at"], 0) + 1
    dropped = ", ".join(f"{step} x{count}" for step, count in counts.items())
    return f"{len(decisions)} candidates; dropped at {dropped}"


def _bounds(low: float, high: float) -> str:
    return f"[{low:g}, {high:g}]"


def pair_similarity(rows: list[AreaRow], model: ClipImageSimilarity, low: float, high: float) -> list[AreaRow]:
    """Step 1: whole-pair CLIP similarity (one call); pairs outside the range have no difference."""
    scores = model.similarity([r.pair[0] for r in rows], [r.pair[1] for r in rows])
    for row, raw in zip(rows, scores, strict=True):
        row.pair_similarity = round(raw, 6)
        if not in_range(row.pair_similarity, low, high):
            row.reason = f"image pair similarity {row.pair_similarity:.4f} outside {_bounds(low, high)}"
    return [r for r in rows if r.reason is None]


def find_changed_nouns(rows: list[AreaRow]) -> list[AreaRow]:
    """Step 2: the nouns only in caption 1 and only in caption 2 (no model); both sides need one."""
    for row in rows:
        only1, only2 = changed_nouns(row.caption1, row.caption2)
        row.nouns = {"caption1": only1, "caption2": only2}
        if not only1 or not only2:
            side = " and ".join(k for k, v in row.nouns.items() if not v)
            row.reason = f"no changed noun found in {side}"
    return [r for r in rows if r.reason is None]


def detect(rows: list[AreaRow], detector: OwlDetector, bbox_format: str, normalized: bool) -> list[AreaRow]:
    """Step 3: candidates in image 1 for caption 1's nouns and in image 2 for caption 2's (one call)."""
    queries = [nouns for r in rows for nouns in r.nouns.values()]
    found = detector.detect([image for r in rows for image in r.pair], queries)
    for number, row in enumerate(rows):
        for source, detections in ((1, found[2 * number]), (2, found[2 * number + 1])):
            for detection in detections:
                size = row.pair[0].size
                row.decisions.append(
                    new_candidate(len(row.decisions), source, detection, size, bbox_format, normalized)
                )
                row.crops.append(tuple(crop_box(image, detection.box) for image in row.pair))  # type: ignore[arg-type]
        if not row.decisions:
            row.reason = "the detector found no candidate for the changed nouns"
    return [r for r in rows if r.reason is None]


def match_crops(rows: list[AreaRow], scorer: BlipITMScorer, low: float, high: float) -> None:
    """Step 4: each crop against its caption's changed nouns (one ITM call); each crop must match one."""
    images: list[Image.Image] = []
    texts: list[str] = []
    owners: list[tuple[dict[str, Any], int, str]] = []
    for row in rows:
        for decision, crops in zip(row.decisions, row.crops, strict=True):
            for which, crop in ((1, crops[0]), (2, crops[1])):
                for noun in row.nouns[f"caption{which}"]:
                    images.append(crop)
                    texts.append(noun)
                    owners.append((decision, which, noun))
    for (decision, which, noun), raw in zip(owners, scorer.score(images, texts), strict=True):
        decision[f"itm_scores{which}"][noun] = round(raw, 6)
    for decision in (d for row in rows for d in row.decisions):
        failed = []
        for which in (1, 2):
            scores = decision[f"itm_scores{which}"]
            decision[f"itm_score{which}"] = max(scores.values())
            if not any(in_range(s, low, high) for s in scores.values()):
                failed.append(f"crop {which} matches none of {', '.join(scores)} (best {max(scores.values()):.4f})")
        if failed:
            drop(decision, STEP_ITM, f"image-text match outside {_bounds(low, high)}: " + "; ".join(failed))


def crop_similarity(rows: list[AreaRow], model: ClipImageSimilarity, low: float, high: float) -> None:
    """Step 5: CLIP similarity of the two crops of each surviving candidate (one call)."""
    survivors = [(d, crops) for row in rows for d, crops in zip(row.decisions, row.crops, strict=True) if d["kept"]]
    scores = model.similarity([c[0] for _, c in survivors], [c[1] for _, c in survivors])
    for (decision, _), raw in zip(survivors, scores, strict=True):
        decision["crop_similarity"] = score = round(raw, 6)
        if not in_range(score, low, high):
            drop(decision, STEP_CROP_SIMILARITY, f"crop pair similarity {score:.4f} outside {_bounds(low, high)}")


def suppress_overlaps(rows: list[AreaRow], nms_iou: float) -> None:
    """Step 6: NMS per row; the least similar (most changed) crop pair wins an overlap."""
    for row in rows:
        survivors = kept(row.decisions)
        boxes = [d["bbox_xyxy"] for d in survivors]
        scores = [-float(d["crop_similarity"]) for d in survivors]
        for index, suppressor, overlap in non_max_suppression(boxes, scores, nms_iou):
            if suppressor is not None:
                other = survivors[suppressor]["index"]
                reason = f"overlaps candidate {other} (IoU {overlap:.2f} > {nms_iou:g})"
                drop(survivors[index], STEP_NMS, reason)


def new_candidate(
    index: int, source: int, detection: Detection, size: tuple[int, int], bbox_format: str, normalized: bool
) -> dict[str, Any]:
    """A detected candidate's decision record: its box in the declared format, Data-Juicer's and pixel xyxy."""
    digits = 4 if normalized else 1
    return {
        "index": index,
        "source_image": source,
        "label": detection.label,
        "detector_score": detection.score,
        "bbox": plain_numbers(from_xyxy(detection.box, bbox_format, size, normalized), digits),  # type: ignore[arg-type]
        "bbox_dj": plain_numbers(from_xyxy(detection.box, "cxcywh", size, False), 1),
        "bbox_xyxy": plain_numbers(detection.box, 2),
        "itm_scores1": {},
        "itm_scores2": {},
        "itm_score1": None,
        "itm_score2": None,
        "crop_similarity": None,
        "kept": True,
        "dropped_at": None,
        "drop_reason": None,
    }
