"""Img-Diff step 4: compare each kept box's two region captions with a text-similarity model.

All caption pairs of the chunk go to the similarity model in one call (CLIP's text encoder by
default, or a sentence-transformers model, chosen by the model folder). A box is kept when the
cosine similarity lies within ``[min_score, max_score]``: with a ``max_score`` below 1 this keeps
the boxes whose captions differ, which is what Img-Diff is after. Parameters are applied literally.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.core.params import ParamSpec
from dataflow_mm.operators.imgdiff.box_decisions import (
    DECISIONS_KEY,
    DROP_SIMILARITY,
    decisions_column,
    describe_drops,
    drop,
    in_range,
    kept,
    log,
    score_filter_range,
)
from dataflow_mm.operators.imgdiff.step_base import ImgDiffOperator
from dataflow_mm.scoring.text_similarity import DEFAULT_CLIP, TextSimilarity, text_similarity_model


class ImgDiffCaptionSimilarityFilter(ImgDiffOperator, OperatorABC):
    """Keep a box when the similarity of its two region captions lies within the score range."""

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.imgdiff_similarity_filter.ImgDiffCaptionSimilarityFilter"

    key_spec = KeySpec(defaults={"decisions_key": DECISIONS_KEY}, reads=("decisions_key",), writes=("decisions_key",))
    holds_model = True
    counted_steps = (DROP_SIMILARITY,)
    param_spec = ParamSpec(exclude=("hf_clip", "device", "batch_size", "allow_tiny_fallback"))  # the model: provenance

    def __init__(
        self,
        similarity: TextSimilarity | None = None,
        min_score: float = 0.1,
        max_score: float = 1.0,
        hf_clip: str = DEFAULT_CLIP,
        device: str = "auto",
        batch_size: int = 64,
        allow_tiny_fallback: bool = False,
    ) -> None:
        self.min_score, self.max_score = score_filter_range(
            self.name, "caption similarity", min_score, max_score, batch_size
        )
        self.similarity = similarity or text_similarity_model(
            hf_clip, device=device, batch_size=batch_size, allow_tiny_fallback=allow_tiny_fallback
        )

    def provenance(self) -> dict[str, Any]:
        return {"caption_similarity": self.similarity.describe()}

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        decisions_key = self.key_values(keys)["decisions_key"]
        out = frame.copy()
        all_decisions = decisions_column(out, decisions_key)
        boxes = [d for decisions in all_decisions for d in kept(decisions)]
        scores = self.similarity.similarity(
            [str(d["region_caption1"] or "") for d in boxes], [str(d["region_caption2"] or "") for d in boxes]
        )
        for decision, raw_score in zip(boxes, scores, strict=True):
            score = round(raw_score, 6)  # the recorded value is the one compared
            decision["caption_similarity"] = score
            if not in_range(score, self.min_score, self.max_score):
                bounds = f"[{self.min_score:g}, {self.max_score:g}]"
                drop(decision, DROP_SIMILARITY, f"caption similarity {score:.4f} outside {bounds}")
        log.info(describe_drops(DROP_SIMILARITY, all_decisions) + f"; {len(boxes)} caption pairs compared")
        out[decisions_key] = all_decisions
        return out
