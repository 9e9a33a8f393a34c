"""Img-Diff steps 2 and 3: crop each kept box from both images and check the crops against their captions.

Crops are clipped to the image (image 2 is resized to image 1's size first) and stay in memory.
Every crop of every row in the chunk is scored by BLIP image-text matching in one scorer call
(batched inside the scorer); a box is kept when both crops' match probabilities lie within
``[min_score, max_score]``. Both scores are recorded on the box, kept or not.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from PIL import Image

from dataflow_mm.common.errors import ERROR_COLUMN
from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.core.params import ParamSpec
from dataflow_mm.imaging.crop import crop_box
from dataflow_mm.operators.imgdiff.box_decisions import (
    DECISIONS_KEY,
    DROP_ITM,
    PAIR_KEYS,
    PairLoader,
    describe_drops,
    drop,
    in_range,
    kept,
    log,
    score_filter_range,
)
from dataflow_mm.operators.imgdiff.step_base import ImgDiffOperator
from dataflow_mm.scoring.image_text_matching import DEFAULT_BLIP_ITM, BlipITMScorer


class ImgDiffImageTextMatchingFilter(ImgDiffOperator, OperatorABC):
    """Keep a box when BLIP ITM says both crops match their region captions (within the score range)."""

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.imgdiff_itm_filter.ImgDiffImageTextMatchingFilter"

    key_spec = KeySpec(
        defaults={**PAIR_KEYS, "decisions_key": DECISIONS_KEY},
        reads=("input_image1_key", "input_image2_key", "decisions_key"),
        writes=("decisions_key",),
    )
    holds_model = True
    counted_steps = (DROP_ITM,)
    param_spec = ParamSpec(exclude=("hf_blip", "device", "batch_size", "allow_tiny_fallback"))  # the model: provenance

    def __init__(
        self,
        scorer: BlipITMScorer | None = None,
        min_score: float = 0.1,
        max_score: float = 1.0,
        hf_blip: str = DEFAULT_BLIP_ITM,
        device: str = "auto",
        batch_size: int = 32,
        allow_tiny_fallback: bool = False,
    ) -> None:
        self.min_score, self.max_score = score_filter_range(
            self.name, "image-text matching", min_score, max_score, batch_size
        )
        self.scorer = scorer or BlipITMScorer(
            hf_blip, device=device, batch_size=batch_size, allow_tiny_fallback=allow_tiny_fallback
        )
        self.images = PairLoader()

    def provenance(self) -> dict[str, Any]:
        return {"image_text_matching": self.scorer.describe()}

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        out, errors, all_decisions, pairs = self.kept_box_rows(frame, keys)
        crops: list[Image.Image] = []
        texts: list[str] = []
        boxes: list[dict[str, Any]] = []
        for position, pair in pairs.items():
            for decision in kept(all_decisions[position]):
                for which, image in ((1, pair[0]), (2, pair[1])):
                    crops.append(crop_box(image, decision["bbox_xyxy"]))
                    texts.append(str(decision[f"region_caption{which}"] or ""))
                boxes.append(decision)
        scores = self.scorer.score(crops, texts)
        for number, decision in enumerate(boxes):
            score1, score2 = round(scores[2 * number], 6), round(scores[2 * number + 1], 6)
            decision["itm_score1"], decision["itm_score2"] = score1, score2
            outside = [
                f"image {which} crop scores {score:.4f}"
                for which, score in ((1, score1), (2, score2))
                if not in_range(score, self.min_score, self.max_score)
            ]
            if outside:
                bounds = f"[{self.min_score:g}, {self.max_score:g}]"
                drop(decision, DROP_ITM, f"image-text match outside {bounds}: " + ", ".join(outside))
        log.info(describe_drops(DROP_ITM, all_decisions) + f"; {len(crops)} crops scored")
        out[keys["decisions_key"]] = all_decisions
        out[ERROR_COLUMN] = errors
        return out
