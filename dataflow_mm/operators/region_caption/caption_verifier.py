"""RegionCaptionVerifier: check each region's caption against the crop of its box (BLIP image-text matching).

For every row, each region with a non-empty caption is cropped from the original image (the
box from ``normalized_bbox``, which holds every valid box as ``[x0/W, y0/H, x1/W, y1/H]`` whatever
the input format, so the crop is right to within a pixel) and scored with the same BLIP ITM
scorer Img-Diff uses. All crops of a chunk go to ONE ``scorer.score`` call (batched inside).

Writes, aligned with ``region_captions``:

* ``region_caption_scores``: the match probability in [0, 1] (``None`` for an empty caption);
* ``region_kept``: ``False`` for a region whose score is below ``min_region_score`` (when set);
  such a region is also listed in ``bbox_dropped`` with its score and the threshold. The region's
  box and caption stay in place, so region numbers keep matching the drawn image; ``dataflowmm
  export`` leaves dropped regions out.

The step's metrics give the score distribution (a 10-bin histogram) and the share of regions kept.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from PIL import Image

from dataflow_mm.common.errors import ERROR_COLUMN, InvalidBoxError, RowError, row_error_text
from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.core.params import ParamSpec
from dataflow_mm.core.results import histogram_metrics
from dataflow_mm.imaging.crop import crop_box
from dataflow_mm.imaging.loading import load_image
from dataflow_mm.scoring.image_text_matching import DEFAULT_BLIP_ITM, BlipITMScorer
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.media import resolve_media_path

SCORES_KEY = "region_caption_scores"
KEPT_KEY = "region_kept"
DROPPED_KEY = "bbox_dropped"


def _as_list(value: Any) -> list[Any]:
    value = value.tolist() if hasattr(value, "tolist") and hasattr(value, "ndim") else value
    return list(value) if isinstance(value, (list, tuple)) else []


def _pixel_box(normalized: Any, size: tuple[int, int]) -> list[float]:
    box = _as_list(normalized)
    if len(box) != 4:
        raise InvalidBoxError(f"normalized box {box!r} is not 4 numbers")
    width, height = size
    return [float(box[0]) * width, float(box[1]) * height, float(box[2]) * width, float(box[3]) * height]


class RegionCaptionVerifier(OperatorABC):
    """Score each region caption against its box's crop; with ``min_region_score``, drop the regions below it."""

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.region_caption_verifier.RegionCaptionVerifier"

    key_spec = KeySpec(
        defaults={
            "input_image_key": "image",
            "input_bbox_key": "normalized_bbox",
            "input_captions_key": "region_captions",
            "output_scores_key": SCORES_KEY,
            "output_kept_key": KEPT_KEY,
        },
        reads=("input_image_key", "input_bbox_key", "input_captions_key"),
        writes=("output_scores_key", "output_kept_key"),
    )
    param_spec = ParamSpec(exclude=("hf_blip", "device", "batch_size", "allow_tiny_fallback"))  # the model: provenance

    def __init__(
        self,
        scorer: BlipITMScorer | None = None,
        min_region_score: float | None = None,
        hf_blip: str = DEFAULT_BLIP_ITM,
        device: str = "auto",
        batch_size: int = 32,
        allow_tiny_fallback: bool = False,
    ) -> None:
        if min_region_score is not None and not (math.isfinite(min_region_score) and 0 <= min_region_score <= 1):
            raise ValueError(f"min_region_score must be within [0, 1], not {min_region_score}")
        self.scorer = scorer or BlipITMScorer(
            hf_blip, device=device, batch_size=batch_size, allow_tiny_fallback=allow_tiny_fallback
        )
        self.min_region_score = None if min_region_score is None else float(min_region_score)
        self._media_root = None

    def output_columns(self, **keys: Any) -> list[str]:
        return [*super().output_columns(**keys), DROPPED_KEY]

    def provenance(self) -> dict[str, Any]:
        return {"image_text_matching": self.scorer.describe()}

    def prepare(self, storage: FileStorage) -> None:
        self._media_root = storage.media_root

    def chunk_metrics(
        self, frame: pd.DataFrame, output_scores_key: str = SCORES_KEY, output_kept_key: str = KEPT_KEY, **_: Any
    ) -> dict[str, float]:
        if output_scores_key not in frame.columns:
            return {}
        scores = [s for v in frame[output_scores_key] for s in _as_list(v) if s is not None]
        kept = [k for v in frame[output_kept_key] for k in _as_list(v)] if output_kept_key in frame.columns else []
        return {
            **histogram_metrics("region_caption_score", scores),
            "region_caption_score_sum": round(sum(scores), 6),
            "region_captions_scored": len(scores),
            "region_captions_kept": sum(1 for k in kept if k),
            "region_captions_kept_total": len(kept),
        }

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        out = frame.copy()
        errors = out[ERROR_COLUMN].tolist() if ERROR_COLUMN in out.columns else [None] * len(out)
        captions = [[str(c or "") for c in _as_list(v)] for v in out[keys["input_captions_key"]].tolist()]
        crops: list[Image.Image] = []
        texts: list[str] = []
        owners: list[tuple[int, int]] = []  # (row position, region index) of each crop
        for position, (image_value, boxes) in enumerate(
            zip(out[keys["input_image_key"]].tolist(), out[keys["input_bbox_key"]].tolist(), strict=True)
        ):
            wanted = [i for i, caption in enumerate(captions[position]) if caption.strip()]
            if not wanted:
                continue
            try:
                image = load_image(resolve_media_path(image_value, self._media_root))
                boxes = _as_list(boxes)
                row_crops = [crop_box(image, _pixel_box(boxes[i], image.size)) for i in wanted]
            except (RowError, IndexError) as exc:
                error = exc if isinstance(exc, RowError) else InvalidBoxError("fewer boxes than region captions")
                errors[position] = row_error_text(error)
                continue
            crops += row_crops
            texts += [captions[position][i] for i in wanted]
            owners += [(position, i) for i in wanted]
        scores = self.scorer.score(crops, texts)
        row_scores: list[list[float | None]] = [[None] * len(c) for c in captions]
        for (position, region), score in zip(owners, scores, strict=True):
            row_scores[position][region] = round(score, 6)
        dropped_lists = out[DROPPED_KEY].tolist() if DROPPED_KEY in out.columns else [None] * len(out)
        kept_column, dropped_column = [], []
        for position, scores_of_row in enumerate(row_scores):
            kept, dropped = [], list(_as_list(dropped_lists[position]))
            for region, score in enumerate(scores_of_row):
                below = self.min_region_score is not None and score is not None and score < self.min_region_score
                kept.append(not below)
                if below:
                    dropped.append(
                        f"region {region + 1}: caption match score {score:.4f} < min_region_score "
                        f"{self.min_region_score:g}"
                    )
            kept_column.append(kept)
            dropped_column.append(dropped)
        out[keys["output_scores_key"]] = row_scores
        out[keys["output_kept_key"]] = kept_column
        out[DROPPED_KEY] = dropped_column
        out[ERROR_COLUMN] = errors
        return out
