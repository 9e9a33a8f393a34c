"""Img-Diff step 0: propose candidate boxes from the pixel difference of each image pair.

Rows that come without boxes (missing or empty) get boxes around where the two aligned images
differ (image 2 resized to image 1's size): the typical input is an edited copy of one image, so
the edited objects stand out. Rows that carry boxes keep them. The boxes are written in the
declared format (default Data-Juicer's pixel ``cxcywh``), so the captioning steps read given and
proposed boxes alike; ``bbox_source`` says which one a row has ("input" or "proposed").

Rows whose boxes are all zero (Data-Juicer's "no difference area" marker) keep them by default,
so they take the seed's empty-result path; ``propose_for_zero_boxes=True`` proposes for them too.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from dataflow_mm.common.checks import check_int, check_number
from dataflow_mm.common.errors import ERROR_COLUMN
from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.imaging.bbox import from_xyxy
from dataflow_mm.imaging.proposals import difference_boxes
from dataflow_mm.operators.imgdiff.box_decisions import (
    BBOX_KEY,
    BOX_KEYS,
    PAIR_KEYS,
    SOURCE_KEY,
    PairLoader,
    check_bbox_format,
    error_list,
    is_all_zero,
    is_missing,
    log,
    plain_numbers,
)
from dataflow_mm.operators.imgdiff.step_base import ImgDiffOperator
from dataflow_mm.operators.interop.data_juicer import box_values, key_column


class ImgDiffDifferenceAreaProposer(ImgDiffOperator, OperatorABC):
    """Fill in boxes around the differing areas of image pairs for rows that have none."""

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.imgdiff_area_proposer.ImgDiffDifferenceAreaProposer"

    key_spec = KeySpec(
        defaults={
            **PAIR_KEYS,
            **BOX_KEYS,
            "output_source_key": SOURCE_KEY,
        },
        reads=("input_image1_key", "input_image2_key"),  # the box column may be absent: every row is then proposed
        writes=("output_bbox_key", "output_source_key"),
    )

    def __init__(
        self,
        bbox_format: str = "cxcywh",
        normalized: bool = False,
        max_boxes: int = 5,
        threshold: float = 40.0,
        min_area_ratio: float = 0.0005,
        propose_for_zero_boxes: bool = False,
    ) -> None:
        name = type(self).__name__
        check_int(f"{name}.max_boxes", max_boxes, 1)
        check_number(f"{name}.threshold", threshold, 0, 255)
        check_number(f"{name}.min_area_ratio", min_area_ratio, 0, 1)
        self.bbox_format = check_bbox_format(bbox_format, name)
        self.normalized = normalized
        self.max_boxes = max_boxes
        self.threshold = threshold
        self.min_area_ratio = min_area_ratio
        self.propose_for_zero_boxes = propose_for_zero_boxes
        self.images = PairLoader()

    def explicit_input_columns(self, input_bbox_key: str = BBOX_KEY, **_: Any) -> list[str]:
        # ... but a box column the caller named must exist, or every row would silently get proposals.
        return [key_column(input_bbox_key)] if input_bbox_key and input_bbox_key != BBOX_KEY else []

    def needs_proposal(self, raw: Any) -> bool:
        return is_missing(raw) or (self.propose_for_zero_boxes and is_all_zero(raw))

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        out = frame.copy()
        errors = error_list(out)
        raw_boxes = box_values(out, keys["input_bbox_key"])  # a column, a dotted path, or Data-Juicer's meta
        todo = [position for position, raw in enumerate(raw_boxes) if self.needs_proposal(raw)]
        pairs = self.images.pairs_at(out, keys, todo, errors)
        boxes: list[Any] = list(raw_boxes)
        sources: list[str | None] = ["input"] * len(out)
        for position in todo:
            pair = pairs.get(position)
            if pair is None:  # its images could not be loaded: the row has the error
                boxes[position], sources[position] = None, None
                continue
            found = difference_boxes(
                pair[0], pair[1], max_boxes=self.max_boxes, threshold=self.threshold, min_area_ratio=self.min_area_ratio
            )
            size = pair[0].size
            digits = 4 if self.normalized else 1
            boxes[position] = [
                plain_numbers(from_xyxy(b, self.bbox_format, size, self.normalized), digits) for b in found
            ]
            sources[position] = "proposed"
        log.info(f"difference areas proposed for {len(todo)} of {len(out)} rows")
        out[keys["output_bbox_key"]] = boxes
        out[keys["output_source_key"]] = sources
        out[ERROR_COLUMN] = errors
        return out
