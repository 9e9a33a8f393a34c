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


class ImgDiffDifferenceAreaGenerator(OperatorABC):
    """Boxes around the object that changed between two captioned images (Data-Juicer's generator)."""

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
        self.pair_args, self.segment_args, self.itm_args = pair, segment, itm
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
    def run(
        self,
        storage: FileStorage,
        input_image1_key: str = IMAGE1_KEY,
        input_image2_key: str = IMAGE2_KEY,
        input_caption1_key: str = CAPTION1_KEY,
        input_caption2_key: str = CAPTION2_KEY,
        input_bbox_key: str = BBOX_KEY,
        output_bbox_key: str = BBOX_KEY,
        output_source_key: str = SOURCE_KEY,
        decisions_key: str = AREA_DECISIONS_KEY,
    ) -> None:
        self.execute(
            storage,
            input_image1_key=input_image1_key,
            input_image2_key=input_image2_key,
            input_caption1_key=input_caption1_key,
            input_caption2_key=input_caption2_key,
            input_bbox_key=input_bbox_key,
            output_bbox_key=output_bbox_key,
            output_source_key=output_source_key,
            decisions_key=decisions_key,
        )

    def input_columns(
        self,
        input_image1_key: str = IMAGE1_KEY,
        input_image2_key: str = IMAGE2_KEY,
        input_caption1_key: str = CAPTION1_KEY,
        input_caption2_key: str = CAPTION2_KEY,
        **_: Any,
    ) -> list[str]:
        return [input_image1_key, input_image2_key, input_caption1_key, input_caption2_key]

    def output_columns(
        self,
        output_bbox_key: str = BBOX_KEY,
        output_source_key: str = SOURCE_KEY,
        decisions_key: str = AREA_DECISIONS_KEY,
        **_: Any,
    ) -> list[str]:
        return [output_bbox_key, output_source_key, decisions_key, AREA_REASON_KEY, PAIR_SIMILARITY_KEY,
                CHANGED_NOUNS_KEY]  # fmt: skip

    def params(self) -> dict[str, Any]:
        return {
            "image_pair_similarity_filter_args": self.pair_args,
            "image_segment_mapper_args": self.segment_args,
            "image_text_matching_filter_args": self.itm_args,
            "bbox_format": self.bbox_format,
            "normalized": self.normalized,
            "nms_iou": self.nms_iou,
            "generate_for_zero_boxes": self.generate_for_zero_boxes,
        }

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
            seen, kept_count = step_counts(step, rows)
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
        pairs: dict[int, ImagePair] = {}
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
            pairs[position] = pair  # type: ignore[assignment]
            sources[position], decisions[position] = SOURCE_GENERATED, []

        def no_difference(position: int, reason: str) -> None:
            reasons[position] = reason
            pairs.pop(position, None)

        # 1. whole-pair similarity (one call for the chunk)
        active = list(pairs)
        similarities = self.image_similarity.similarity([pairs[p][0] for p in active], [pairs[p][1] for p in active])
        low, high = self.pair_args["min_score_1"], self.pair_args["max_score_1"]
        for position, raw in zip(active, similarities, strict=True):
            score = round(raw, 6)
            pair_scores[position] = score
            if not in_range(score, low, high):
                no_difference(position, f"image pair similarity {score:.4f} outside {_bounds(low, high)}")

        # 2. changed nouns (no model)
        for position in list(pairs):
            only1, only2 = changed_nouns(captions1[position], captions2[position])
            nouns[position] = {"caption1": only1, "caption2": only2}
            if not only1 or not only2:
                side = " and ".join(k for k, v in (("caption1", only1), ("caption2", only2)) if not v)
                no_difference(position, f"no changed noun found in {side}")

        # 3. candidates: each image queried with its own changed nouns (one call for the chunk)
        active = list(pairs)
        queries = [nouns[p][key] for p in active for key in ("caption1", "caption2")]  # type: ignore[index]
        found = self.detector.detect([image for p in active for image in pairs[p]], queries)
        candidates: dict[int, list[tuple[dict[str, Any], Detection]]] = {}
        for number, position in enumerate(active):
            row: list[tuple[dict[str, Any], Detection]] = []
            for source, detections in ((1, found[2 * number]), (2, found[2 * number + 1])):
                for detection in detections:
                    row.append((self._new_candidate(len(row), source, detection, pairs[position][0].size), detection))
            decisions[position] = [c for c, _ in row]
            candidates[position] = row
            if not row:
                no_difference(position, "the detector found no candidate for the changed nouns")

        # 4. crops against the changed nouns (one ITM call for the chunk)
        crops: dict[int, tuple[Image.Image, Image.Image]] = {}
        itm_images: list[Image.Image] = []
        itm_texts: list[str] = []
        owners: list[tuple[dict[str, Any], int, str]] = []
        for position in list(pairs):
            for candidate, detection in candidates[position]:
                crop1, crop2 = (crop_box(image, detection.box) for image in pairs[position])
                crops[id(candidate)] = (crop1, crop2)
                for which, crop in ((1, crop1), (2, crop2)):
                    for noun in nouns[position][f"caption{which}"]:  # type: ignore[index]
                        itm_images.append(crop)
                        itm_texts.append(noun)
                        owners.append((candidate, which, noun))
        for (candidate, which, noun), raw in zip(owners, self.itm_scorer.score(itm_images, itm_texts), strict=True):
            candidate[f"itm_scores{which}"][noun] = round(raw, 6)
        low, high = self.itm_args["min_score"], self.itm_args["max_score"]
        for position in list(pairs):
            for candidate, _ in candidates[position]:
                failed = []
                for which in (1, 2):
                    scores = candidate[f"itm_scores{which}"]
                    candidate[f"itm_score{which}"] = max(scores.values())
                    if not any(in_range(s, low, high) for s in scores.values()):
                        failed.append(
                            f"crop {which} matches none of {', '.join(scores)} (best {max(scores.values()):.4f})"
                        )
                if failed:
                    drop(candidate, STEP_ITM, f"image-text match outside {_bounds(low, high)}: " + "; ".join(failed))

        # 5. crop-pair similarity (one call for the chunk)
        survivors = [c for p in pairs for c, _ in candidates[p] if c["kept"]]
        crop_scores = self.image_similarity.similarity(
            [crops[id(c)][0] for c in survivors], [crops[id(c)][1] for c in survivors]
        )
        low, high = self.pair_args["min_score_2"], self.pair_args["max_score_2"]
        for candidate, raw in zip(survivors, crop_scores, strict=True):
            score = round(raw, 6)
            candidate["crop_similarity"] = score
            if not in_range(score, low, high):
                drop(candidate, STEP_CROP_SIMILARITY, f"crop pair similarity {score:.4f} outside {_bounds(low, high)}")

        # 6. NMS (least similar crop pair first) and the row's boxes
        for position in list(pairs):
            row_kept = kept(decisions[position] or [])
            self._suppress(row_kept)
            final = kept(decisions[position] or [])
            if not final:
                no_difference(position, "no candidate passed the filters: " + _drop_summary(decisions[position] or []))
                continue
            final.sort(key=lambda d: (d["crop_similarity"], d["index"]))
            boxes[position] = [d["bbox"] for d in final]
            if dj:
                metas[position] = with_dj_bboxes(metas[position], [d["bbox_dj"] for d in final])
        for position, reason in enumerate(reasons):
            if reason is not None:
                boxes[position] = [list(b) for b in NO_DIFFERENCE]
                if dj:
                    metas[position] = with_dj_bboxes(metas[position], [list(b) for b in NO_DIFFERENCE])

        generated = sum(1 for s in sources if s == SOURCE_GENERATED)
        with_boxes = sum(1 for p, s in enumerate(sources) if s == SOURCE_GENERATED and reasons[p] is None)
        log.info(
            f"difference areas generated for {generated} of {n} rows ({with_boxes} with boxes); "
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

    def _suppress(self, row_kept: list[dict[str, Any]]) -> None:
        """Drop kept candidates that overlap a less similar (more changed) kept one by IoU > ``nms_iou``."""
        boxes = [d["bbox_xyxy"] for d in row_kept]
        scores = [-float(d["crop_similarity"]) for d in row_kept]
        for index, suppressor, overlap in non_max_suppression(boxes, scores, self.nms_iou):
            if suppressor is not None:
                other = row_kept[suppressor]["index"]
                drop(row_kept[index], STEP_NMS, f"overlaps candidate {other} (IoU {overlap:.2f} > {self.nms_iou:g})")
