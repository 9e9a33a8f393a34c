"""Img-Diff step 0 for real pairs: find the changed object from the captions and the images (model-based).

Real Img-Diff pairs are two generated images whose captions differ by one object, so every pixel
differs a little and the changed object a lot: the pixel-difference proposer
(``ImgDiffDifferenceAreaProposer``) is right for edited copies, this generator for such pairs.
It follows Data-Juicer's ``imgdiff_difference_area_generator_mapper``, batched over the chunk:

1. whole-pair similarity of CLIP image embeddings; a pair outside ``[min_score_1, max_score_1]``
   gets the "no difference" result ``[[0, 0, 0, 0]]``, with the reason in ``area_reason``;
2. the nouns that differ between ``caption1`` and ``caption2`` (``imgdiff_changed_words``);
3. candidate boxes in image 1 for its changed nouns and in image 2 for its own, from an
   open-vocabulary detector (OWLv2 through transformers; Data-Juicer segments with FastSAM);
4. every candidate cropped from both images; crop 1 scored by BLIP image-text matching against
   caption 1's changed nouns, crop 2 against caption 2's; a candidate is kept when each crop
   matches at least one of its nouns within ``[min_score, max_score]``;
5. crop-pair CLIP image similarity; kept within ``[min_score_2, max_score_2]`` (the changed ones);
6. non-maximum suppression (IoU > ``nms_iou``), least similar crop pair first.

Each model is called once per chunk on all of the chunk's items (the scorers cut that into
forward passes of ``batch_size``); crops stay in memory. Boxes go to the box column in the
declared format (default Data-Juicer's pixel ``[cx, cy, w, h]``) and, when the table has
Data-Juicer's ``__dj__meta__`` column, to ``__dj__meta__.__dj__bbox__`` as well. Every candidate's
scores, and the step that dropped it, are kept in ``area_decisions``. Rows that carry boxes keep
them (``bbox_source`` "input"); generated rows say "generated".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from PIL import Image

from dataflow_mm.errors import ERROR_COLUMN, MissingFieldError, RowError, UserError
from dataflow_mm.imaging.bbox import from_xyxy
from dataflow_mm.imaging.crop import crop_box
from dataflow_mm.imaging.nms import non_max_suppression
from dataflow_mm.operators.base import OperatorABC
from dataflow_mm.operators.imgdiff_changed_words import changed_nouns
from dataflow_mm.operators.imgdiff_common import (
    BBOX_KEY,
    IMAGE1_KEY,
    IMAGE2_KEY,
    IMGDIFF_REPORT_VIEW,
    SOURCE_KEY,
    ImagePair,
    PairLoader,
    check_bbox_format,
    check_score_range,
    copy_decisions,
    drop,
    error_list,
    in_range,
    is_all_zero,
    is_missing,
    kept,
    log,
    plain_numbers,
    set_row_errors,
    step_counts,
)
from dataflow_mm.operators.imgdiff_dj_meta import DJ_META_KEY, dj_bboxes, uses_dj_format, with_dj_bboxes
from dataflow_mm.operators.keys import KeySpec
from dataflow_mm.operators.params import ParamSpec
from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
from dataflow_mm.scoring.image_text_matching import DEFAULT_BLIP_ITM, BlipITMScorer
from dataflow_mm.scoring.object_detection import DEFAULT_DETECTOR, Detection, OwlDetector
from dataflow_mm.scoring.text_similarity import DEFAULT_CLIP
from dataflow_mm.storage.file_storage import FileStorage

CAPTION1_KEY = "caption1"
CAPTION2_KEY = "caption2"
AREA_DECISIONS_KEY = "area_decisions"
AREA_REASON_KEY = "area_reason"
PAIR_SIMILARITY_KEY = "image_pair_similarity"
CHANGED_NOUNS_KEY = "changed_nouns"
SOURCE_GENERATED = "generated"
NO_DIFFERENCE: list[list[int]] = [[0, 0, 0, 0]]
PROPOSERS = ("pixel", "model", "auto")

# Where a candidate was dropped (``dropped_at``), in order.
STEP_ITM = "image_text_matching"
STEP_CROP_SIMILARITY = "crop_pair_similarity"
STEP_NMS = "nms"
CANDIDATE_STEPS = (STEP_ITM, STEP_CROP_SIMILARITY, STEP_NMS)

# Data-Juicer's argument dicts and defaults. ``num_proc`` is accepted and unused (batching replaces
# processes); ``imgsz`` is accepted and unused (the detector's processor sets its input size);
# ``max_boxes`` (candidates per image) is this project's addition.
PAIR_SIMILARITY_DEFAULTS: dict[str, Any] = {
    "min_score_1": 0.1,
    "max_score_1": 1.0,
    "min_score_2": 0.1,
    "max_score_2": 1.0,
    "hf_clip": DEFAULT_CLIP,
    "num_proc": 1,
}
SEGMENT_DEFAULTS: dict[str, Any] = {
    "imgsz": 1024,
    "conf": 0.05,
    "iou": 0.5,
    "model_path": DEFAULT_DETECTOR,
    "max_boxes": 10,
}
ITM_DEFAULTS: dict[str, Any] = {"min_score": 0.1, "max_score": 1.0, "hf_blip": DEFAULT_BLIP_ITM, "num_proc": 1}


def merged_args(name: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``defaults`` updated with ``given``; a key Data-Juicer's dict does not have is an error."""
    given = dict(given or {})
    given.pop("accelerator", None)  # Data-Juicer adds it; the device is this operator's ``device``
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {', '.join(unknown)}; expected {', '.join(defaults)}")
    return {**defaults, **given}


def choose_proposer(choice: str, storage: FileStorage, caption_keys: tuple[str, str]) -> str:
    """``"pixel"`` or ``"model"``: ``auto`` is "model" when the input's first rows carry both caption columns.

    Real Img-Diff pairs come with the two captions they were generated from; edited copies usually
    do not, and the pixel-difference proposer is the right tool for them.
    """
    if choice not in PROPOSERS:
        raise UserError(f"unknown proposer {choice!r}; expected one of {', '.join(PROPOSERS)}")
    if choice != "auto":
        return choice
    try:
        chunk = next(storage.iter_chunks(chunk_size=16), None)
    except UserError:
        return "pixel"  # the run's own checks report an unreadable input
    has_captions = chunk is not None and all(key in chunk.frame.columns for key in caption_keys)
    return "model" if has_captions else "pixel"


def _drop_summary(decisions: list[dict[str, Any]]) -> str:
    """``"3 candidates; dropped at image_text_matching x2, nms x1"``."""
    counts: dict[str, int] = {}
    for d in decisions:
        if not d["kept"]:
            counts[d["dropped_at"]] = counts.get(d["dropped_at"], 0) + 1
    dropped = ", ".join(f"{step} x{count}" for step, count in counts.items())
    return f"{len(decisions)} candidates; dropped at {dropped}"


def _bounds(low: float, high: float) -> str:
    return f"[{low:g}, {high:g}]"


@dataclass
class _Row:
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


class ImgDiffDifferenceAreaGenerator(OperatorABC):
    """Boxes around the object that changed between two captioned images (Data-Juicer's generator)."""

    report_view = IMGDIFF_REPORT_VIEW  # what the HTML report shows of the output
    key_spec = KeySpec(
        defaults={
            "input_image1_key": IMAGE1_KEY,
            "input_image2_key": IMAGE2_KEY,
            "input_caption1_key": CAPTION1_KEY,
            "input_caption2_key": CAPTION2_KEY,
            "input_bbox_key": BBOX_KEY,
            "output_bbox_key": BBOX_KEY,
            "output_source_key": SOURCE_KEY,
            "decisions_key": AREA_DECISIONS_KEY,
        },
        reads=("input_image1_key", "input_image2_key", "input_caption1_key", "input_caption2_key"),
        writes=("output_bbox_key", "output_source_key", "decisions_key"),
    )
    holds_model = True
    # the models are recorded by provenance; these only say where and how they run
    param_spec = ParamSpec(exclude=("device", "batch_size", "allow_tiny_fallback", "hf_cache_dir", "hf_local_dir"))

    def __init__(
        self,
        image_pair_similarity_filter_args: Mapping[str, Any] | None = None,
        image_segment_mapper_args: Mapping[str, Any] | None = None,
        image_text_matching_filter_args: Mapping[str, Any] | None = None,
        *,
        image_similarity: ClipImageSimilarity | None = None,
        detector: OwlDetector | None = None,
        itm_scorer: BlipITMScorer | None = None,
        bbox_format: str = "cxcywh",
        normalized: bool = False,
        nms_iou: float = 0.5,
        generate_for_zero_boxes: bool = False,
        device: str = "auto",
        batch_size: int = 32,
        allow_tiny_fallback: bool = False,
        hf_cache_dir: str | None = None,
        hf_local_dir: str | None = None,
    ) -> None:
        pair = merged_args(
            "image_pair_similarity_filter_args", PAIR_SIMILARITY_DEFAULTS, image_pair_similarity_filter_args
        )
        segment = merged_args("image_segment_mapper_args", SEGMENT_DEFAULTS, image_segment_mapper_args)
        itm = merged_args("image_text_matching_filter_args", ITM_DEFAULTS, image_text_matching_filter_args)
        check_score_range("image pair similarity", pair["min_score_1"], pair["max_score_1"])
        check_score_range("crop pair similarity", pair["min_score_2"], pair["max_score_2"])
        check_score_range("image-text matching", itm["min_score"], itm["max_score"])
        self.image_pair_similarity_filter_args = pair
        self.image_segment_mapper_args = segment
        self.image_text_matching_filter_args = itm
        self.bbox_format = check_bbox_format(bbox_format)
        self.normalized = normalized
        self.nms_iou = float(nms_iou)
        self.generate_for_zero_boxes = generate_for_zero_boxes
        shared = {
            "device": device,
            "allow_tiny_fallback": allow_tiny_fallback,
            "hf_cache_dir": hf_cache_dir,
            "hf_local_dir": hf_local_dir,
        }
        self.image_similarity = image_similarity or ClipImageSimilarity(
            pair["hf_clip"], batch_size=batch_size, **shared
        )
        self.detector = detector or OwlDetector(
            segment["model_path"],
            batch_size=batch_size,
            threshold=segment["conf"],
            iou=segment["iou"],
            max_boxes=segment["max_boxes"],
            **shared,
        )
        self.itm_scorer = itm_scorer or BlipITMScorer(itm["hf_blip"], batch_size=batch_size, **shared)
        self.images = PairLoader()

    # -- the operator contract ------------------------------------------------------------------
    def output_columns(self, **keys: Any) -> list[str]:
        return [*super().output_columns(**keys), AREA_REASON_KEY, PAIR_SIMILARITY_KEY, CHANGED_NOUNS_KEY]

    def provenance(self) -> dict[str, Any]:
        return {
            "image_similarity": self.image_similarity.describe(),
            "detector": self.detector.describe(),
            "image_text_matching": self.itm_scorer.describe(),
        }

    def prepare(self, storage: FileStorage) -> None:
        self.images.media_root = storage.media_root

    def chunk_metrics(self, frame: pd.DataFrame, decisions_key: str = AREA_DECISIONS_KEY, **_: Any) -> dict[str, float]:
        if decisions_key not in frame.columns:
            return {}
        rows = [copy_decisions(v) for v in frame[decisions_key].tolist()]
        metrics: dict[str, float] = {"area_candidates": sum(len(r) for r in rows)}
        for step in CANDIDATE_STEPS:
            seen, kept_count = step_counts(step, rows, CANDIDATE_STEPS)
            metrics[f"candidates_after_{step}"] = kept_count
            metrics[f"candidates_after_{step}_total"] = seen
        return metrics

    def cleanup(self) -> None:
        for model in (self.image_similarity, self.detector, self.itm_scorer):
            model.cleanup()

    # -- the batch transform --------------------------------------------------------------------
    def needs_generation(self, raw: Any) -> bool:
        return is_missing(raw) or (self.generate_for_zero_boxes and is_all_zero(raw))

    def process(
        self,
        frame: pd.DataFrame,
        input_image1_key: str = IMAGE1_KEY,
        input_image2_key: str = IMAGE2_KEY,
        input_caption1_key: str = CAPTION1_KEY,
        input_caption2_key: str = CAPTION2_KEY,
        input_bbox_key: str = BBOX_KEY,
        output_bbox_key: str = BBOX_KEY,
        output_source_key: str = SOURCE_KEY,
        decisions_key: str = AREA_DECISIONS_KEY,
        **_: Any,
    ) -> pd.DataFrame:
        out = frame.copy()
        n = len(out)
        errors = error_list(out)
        dj = uses_dj_format(out)
        metas = out[DJ_META_KEY].tolist() if dj else [None] * n
        if input_bbox_key in out.columns:
            raw_boxes = out[input_bbox_key].tolist()
        else:
            raw_boxes = [dj_bboxes(meta) for meta in metas]
        boxes: list[Any] = list(raw_boxes)
        sources: list[str | None] = ["input"] * n
        decisions: list[list[dict[str, Any]] | None] = [None] * n
        reasons: list[str | None] = [None] * n
        pair_scores: list[float | None] = [None] * n
        nouns: list[dict[str, list[str]] | None] = [None] * n

        todo = [p for p, raw in enumerate(raw_boxes) if self.needs_generation(raw)]
        captions1, captions2 = out[input_caption1_key].tolist(), out[input_caption2_key].tolist()
        loaded = self.images.load_pairs(
            [out[input_image1_key].iloc[p] for p in todo], [out[input_image2_key].iloc[p] for p in todo]
        )
        rows: list[_Row] = []
        for position, pair in zip(todo, loaded, strict=True):
            missing = [key for key, v in ((input_caption1_key, captions1[position]), (input_caption2_key,
                       captions2[position])) if not isinstance(v, str) or not v.strip()]  # fmt: skip
            error: RowError | None = pair if isinstance(pair, RowError) else None
            if error is None and missing:
                error = MissingFieldError(f"no caption in {', '.join(missing)}: the generator needs both captions")
            if error is not None:
                set_row_errors(errors, position, error)
                boxes[position], sources[position] = None, None
                continue
            rows.append(_Row(position, pair, captions1[position], captions2[position]))  # type: ignore[arg-type]

        active = self._pair_similarity(rows)
        active = self._changed_nouns(active)
        active = self._detect(active)
        self._match_crops(active)
        self._crop_similarity(active)
        self._suppress_overlaps(active)

        for row in rows:
            final = sorted(kept(row.decisions), key=lambda d: (d["crop_similarity"], d["index"]))
            if row.reason is None and not final:
                row.reason = "no candidate passed the filters: " + _drop_summary(row.decisions)
            p = row.position
            sources[p], decisions[p], reasons[p] = SOURCE_GENERATED, row.decisions, row.reason
            pair_scores[p], nouns[p] = row.pair_similarity, row.nouns
            boxes[p] = [d["bbox"] for d in final] if row.reason is None else [list(b) for b in NO_DIFFERENCE]
            if dj:
                dj_boxes = [d["bbox_dj"] for d in final] if row.reason is None else [list(b) for b in NO_DIFFERENCE]
                metas[p] = with_dj_bboxes(metas[p], dj_boxes)

        with_boxes = sum(1 for row in rows if row.reason is None)
        log.info(
            f"difference areas generated for {len(rows)} of {n} rows ({with_boxes} with boxes); "
            f"model calls so far: CLIP {self.image_similarity.stats.calls}, detector {self.detector.stats.calls}, "
            f"ITM {self.itm_scorer.stats.calls}"
        )
        out[output_bbox_key] = boxes
        out[output_source_key] = sources
        out[decisions_key] = decisions
        out[AREA_REASON_KEY] = pd.Series(reasons, index=out.index, dtype=object)
        out[PAIR_SIMILARITY_KEY] = pd.Series(pair_scores, index=out.index, dtype=object)
        out[CHANGED_NOUNS_KEY] = nouns
        if dj:
            out[DJ_META_KEY] = metas
        out[ERROR_COLUMN] = errors
        return out

    # -- the six steps, each over all active rows of the chunk; a row that ends gets its reason --------
    def _pair_similarity(self, rows: list[_Row]) -> list[_Row]:
        """Step 1: whole-pair CLIP similarity (one call); pairs outside the range have no difference."""
        scores = self.image_similarity.similarity([r.pair[0] for r in rows], [r.pair[1] for r in rows])
        pair_args = self.image_pair_similarity_filter_args
        low, high = pair_args["min_score_1"], pair_args["max_score_1"]
        for row, raw in zip(rows, scores, strict=True):
            row.pair_similarity = round(raw, 6)
            if not in_range(row.pair_similarity, low, high):
                row.reason = f"image pair similarity {row.pair_similarity:.4f} outside {_bounds(low, high)}"
        return [r for r in rows if r.reason is None]

    def _changed_nouns(self, rows: list[_Row]) -> list[_Row]:
        """Step 2: the nouns only in caption 1 and only in caption 2 (no model); both sides need one."""
        for row in rows:
            only1, only2 = changed_nouns(row.caption1, row.caption2)
            row.nouns = {"caption1": only1, "caption2": only2}
            if not only1 or not only2:
                side = " and ".join(k for k, v in row.nouns.items() if not v)
                row.reason = f"no changed noun found in {side}"
        return [r for r in rows if r.reason is None]

    def _detect(self, rows: list[_Row]) -> list[_Row]:
        """Step 3: candidates in image 1 for caption 1's nouns and in image 2 for caption 2's (one call)."""
        queries = [nouns for r in rows for nouns in r.nouns.values()]
        found = self.detector.detect([image for r in rows for image in r.pair], queries)
        for number, row in enumerate(rows):
            for source, detections in ((1, found[2 * number]), (2, found[2 * number + 1])):
                for detection in detections:
                    decision = self._new_candidate(len(row.decisions), source, detection, row.pair[0].size)
                    row.decisions.append(decision)
                    row.crops.append(tuple(crop_box(image, detection.box) for image in row.pair))  # type: ignore[arg-type]
            if not row.decisions:
                row.reason = "the detector found no candidate for the changed nouns"
        return [r for r in rows if r.reason is None]

    def _match_crops(self, rows: list[_Row]) -> None:
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
        for (decision, which, noun), raw in zip(owners, self.itm_scorer.score(images, texts), strict=True):
            decision[f"itm_scores{which}"][noun] = round(raw, 6)
        low, high = self.image_text_matching_filter_args["min_score"], self.image_text_matching_filter_args["max_score"]
        for decision in (d for row in rows for d in row.decisions):
            failed = []
            for which in (1, 2):
                scores = decision[f"itm_scores{which}"]
                decision[f"itm_score{which}"] = max(scores.values())
                if not any(in_range(s, low, high) for s in scores.values()):
                    failed.append(f"crop {which} matches none of {', '.join(scores)} (best {max(scores.values()):.4f})")
            if failed:
                drop(decision, STEP_ITM, f"image-text match outside {_bounds(low, high)}: " + "; ".join(failed))

    def _crop_similarity(self, rows: list[_Row]) -> None:
        """Step 5: CLIP similarity of the two crops of each surviving candidate (one call)."""
        survivors = [(d, crops) for row in rows for d, crops in zip(row.decisions, row.crops, strict=True) if d["kept"]]
        scores = self.image_similarity.similarity([c[0] for _, c in survivors], [c[1] for _, c in survivors])
        pair_args = self.image_pair_similarity_filter_args
        low, high = pair_args["min_score_2"], pair_args["max_score_2"]
        for (decision, _), raw in zip(survivors, scores, strict=True):
            decision["crop_similarity"] = score = round(raw, 6)
            if not in_range(score, low, high):
                drop(decision, STEP_CROP_SIMILARITY, f"crop pair similarity {score:.4f} outside {_bounds(low, high)}")

    def _suppress_overlaps(self, rows: list[_Row]) -> None:
        """Step 6: NMS per row; the least similar (most changed) crop pair wins an overlap."""
        for row in rows:
            survivors = kept(row.decisions)
            boxes = [d["bbox_xyxy"] for d in survivors]
            scores = [-float(d["crop_similarity"]) for d in survivors]
            for index, suppressor, overlap in non_max_suppression(boxes, scores, self.nms_iou):
                if suppressor is not None:
                    other = survivors[suppressor]["index"]
                    reason = f"overlaps candidate {other} (IoU {overlap:.2f} > {self.nms_iou:g})"
                    drop(survivors[index], STEP_NMS, reason)

    # -- helpers --------------------------------------------------------------------------------
    def _new_candidate(self, index: int, source: int, detection: Detection, size: tuple[int, int]) -> dict[str, Any]:
        digits = 4 if self.normalized else 1
        return {
            "index": index,
            "source_image": source,
            "label": detection.label,
            "detector_score": detection.score,
            "bbox": plain_numbers(from_xyxy(detection.box, self.bbox_format, size, self.normalized), digits),  # type: ignore[arg-type]
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
