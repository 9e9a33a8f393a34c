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

The six steps are in ``imgdiff_area_steps``, the columns and Data-Juicer's argument dicts in
``imgdiff_area_settings``; this module is the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from dataflow_mm.errors import ERROR_COLUMN, MissingFieldError
from dataflow_mm.operators.base import OperatorABC
from dataflow_mm.operators.imgdiff_area_settings import (  # noqa: F401 - importable from here, their first home
    AREA_DECISIONS_KEY,
    AREA_REASON_KEY,
    CAPTION1_KEY,
    CAPTION2_KEY,
    CHANGED_NOUNS_KEY,
    ITM_DEFAULTS,
    NO_DIFFERENCE,
    PAIR_SIMILARITY_DEFAULTS,
    PAIR_SIMILARITY_KEY,
    PROPOSERS,
    SEGMENT_DEFAULTS,
    SOURCE_GENERATED,
    choose_proposer,
    merged_args,
)
from dataflow_mm.operators.imgdiff_area_steps import (  # noqa: F401 - importable from here, their first home
    CANDIDATE_STEPS,
    STEP_CROP_SIMILARITY,
    STEP_ITM,
    STEP_NMS,
    AreaRow,
    crop_similarity,
    detect,
    drop_summary,
    find_changed_nouns,
    match_crops,
    pair_similarity,
    suppress_overlaps,
)
from dataflow_mm.operators.imgdiff_common import (
    BOX_KEYS,
    PAIR_KEYS,
    SOURCE_KEY,
    PairLoader,
    check_bbox_format,
    check_score_range,
    copy_decisions,
    error_list,
    is_all_zero,
    is_missing,
    kept,
    log,
    set_row_errors,
    step_counts,
)
from dataflow_mm.operators.imgdiff_dj_meta import (
    DJ_META_KEY,
    dj_bboxes,
    meta_problem,
    uses_dj_format,
    with_dj_bboxes,
)
from dataflow_mm.operators.imgdiff_operator import ImgDiffOperator
from dataflow_mm.operators.keys import KeySpec
from dataflow_mm.operators.params import ParamSpec
from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from dataflow_mm.scoring.object_detection import OwlDetector


class ImgDiffDifferenceAreaGenerator(ImgDiffOperator, OperatorABC):
    """Boxes around the object that changed between two captioned images (Data-Juicer's generator)."""

    key_spec = KeySpec(
        defaults={
            **PAIR_KEYS,
            "input_caption1_key": CAPTION1_KEY,
            "input_caption2_key": CAPTION2_KEY,
            **BOX_KEYS,
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

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        caption_keys = (keys["input_caption1_key"], keys["input_caption2_key"])
        out = frame.copy()
        n = len(out)
        errors = error_list(out)
        dj = uses_dj_format(out)
        metas = out[DJ_META_KEY].tolist() if dj else [None] * n
        if keys["input_bbox_key"] in out.columns:
            raw_boxes = out[keys["input_bbox_key"]].tolist()
        else:
            raw_boxes = [dj_bboxes(meta) for meta in metas]
        boxes: list[Any] = list(raw_boxes)
        sources: list[str | None] = ["input"] * n
        decisions: list[list[dict[str, Any]] | None] = [None] * n
        reasons: list[str | None] = [None] * n
        pair_scores: list[float | None] = [None] * n
        nouns: list[dict[str, list[str]] | None] = [None] * n

        todo = [p for p, raw in enumerate(raw_boxes) if self.needs_generation(raw)]
        if dj:  # a row whose meta cell would be written but is not a dict keeps it: the row gets the error instead
            for position in todo:
                problem = meta_problem(metas[position])
                if problem is not None:
                    set_row_errors(errors, position, problem)
            todo = [p for p in todo if meta_problem(metas[p]) is None]
        captions = [out[key].tolist() for key in caption_keys]
        pairs = self.images.pairs_at(out, keys, todo, errors)
        rows: list[AreaRow] = []
        for position in todo:
            pair = pairs.get(position)
            texts = [column[position] for column in captions]
            missing = [
                key for key, v in zip(caption_keys, texts, strict=True) if not isinstance(v, str) or not v.strip()
            ]
            if pair is not None and missing:
                error = MissingFieldError(f"no caption in {', '.join(missing)}: the generator needs both captions")
                set_row_errors(errors, position, error)
            if pair is None or missing:  # the row has the error
                boxes[position], sources[position] = None, None
                continue
            rows.append(AreaRow(position, pair, *texts))
        self._find_areas(rows)

        for row in rows:
            final = sorted(kept(row.decisions), key=lambda d: (d["crop_similarity"], d["index"]))
            if row.reason is None and not final:
                row.reason = "no candidate passed the filters: " + drop_summary(row.decisions)
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
        out[keys["output_bbox_key"]] = boxes
        out[keys["output_source_key"]] = sources
        out[keys["decisions_key"]] = decisions
        out[AREA_REASON_KEY] = pd.Series(reasons, index=out.index, dtype=object)
        out[PAIR_SIMILARITY_KEY] = pd.Series(pair_scores, index=out.index, dtype=object)
        out[CHANGED_NOUNS_KEY] = nouns
        if dj:
            out[DJ_META_KEY] = metas
        out[ERROR_COLUMN] = errors
        return out

    def _find_areas(self, rows: list[AreaRow]) -> None:
        """The six steps (``imgdiff_area_steps``) over the chunk's rows; a row that ends early gets its reason."""
        pair, itm = self.image_pair_similarity_filter_args, self.image_text_matching_filter_args
        active = pair_similarity(rows, self.image_similarity, pair["min_score_1"], pair["max_score_1"])
        active = find_changed_nouns(active)
        active = detect(active, self.detector, self.bbox_format, self.normalized)
        match_crops(active, self.itm_scorer, itm["min_score"], itm["max_score"])
        crop_similarity(active, self.image_similarity, pair["min_score_2"], pair["max_score_2"])
        suppress_overlaps(active, self.nms_iou)
