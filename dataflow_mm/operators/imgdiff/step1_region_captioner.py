"""Img-Diff step 1: describe each candidate box region in both images, one batched VLM call per chunk.

For every box of every row in the chunk, two requests go into ONE ``serving.chat`` call: image 1
with the region prompt and image 2 (resized to image 1's size) with the same prompt. The prompt
names the box by its normalized ``[x1, y1, x2, y2]`` coordinates with two decimals, as in
Data-Juicer's original. Boxes covering more than ``max_box_area_ratio`` of the image (default
1/10, as in the original) are dropped before any request is made.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from dataflow_mm.common.checks import check_int, check_number
from dataflow_mm.common.errors import ERROR_COLUMN, ConfigError, RowError
from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.core.params import ParamSpec
from dataflow_mm.imaging.bbox import box_area
from dataflow_mm.operators.imgdiff.box_decisions import (
    BBOX_KEY,
    DECISIONS_KEY,
    DROP_AREA,
    DROP_PARSE,
    DROP_REGION_CAPTION,
    MAX_INPUT_BOXES,
    PAIR_KEYS,
    PairLoader,
    candidate_decisions,
    check_bbox_format,
    describe_drops,
    drop,
    error_list,
    fail,
    input_box_count,
    kept,
    log,
    request_failure,
    set_row_errors,
    vlm_provenance,
)
from dataflow_mm.operators.imgdiff.step_base import ImgDiffOperator
from dataflow_mm.operators.interop.data_juicer import box_values, key_column
from dataflow_mm.serving.base import Conversation, SamplingParams, VLMServing
from dataflow_mm.serving.messages import build_conversation

DEFAULT_REGION_PROMPT = "Please provide a clear description for this region: {bbox}."


def normalized_box_text(xyxy: list[float], size: tuple[int, int]) -> str:
    """``"[0.12, 0.30, 0.45, 0.60]"``: the box as fractions of the image, two decimals (the seed's prompt form)."""
    width, height = size
    x0, y0, x1, y1 = xyxy
    return f"[{x0 / width:.2f}, {y0 / height:.2f}, {x1 / width:.2f}, {y1 / height:.2f}]"


class ImgDiffRegionCaptioner(ImgDiffOperator, OperatorABC):
    """Caption every candidate box region in image 1 and image 2 (all rows of a chunk in one VLM call)."""

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.imgdiff_region_captioner.ImgDiffRegionCaptioner"

    key_spec = KeySpec(
        defaults={
            **PAIR_KEYS,
            "input_bbox_key": BBOX_KEY,
            "decisions_key": DECISIONS_KEY,
        },
        reads=("input_image1_key", "input_image2_key"),
        writes=("decisions_key",),
    )
    holds_model = True
    counted_steps = (DROP_PARSE, DROP_AREA, DROP_REGION_CAPTION)
    param_spec = ParamSpec(
        exclude=("sampling",), omit_none=("max_input_boxes",)
    )  # recorded by provenance, with the serving

    def __init__(
        self,
        serving: VLMServing,
        bbox_format: str = "cxcywh",
        normalized: bool = False,
        max_box_area_ratio: float | None = 0.1,
        prompt_template: str = DEFAULT_REGION_PROMPT,
        system_prompt: str = "",
        sampling: SamplingParams | None = None,
        max_input_boxes: int | None = None,
    ) -> None:
        """``max_input_boxes``: boxes read per row (None: ``MAX_INPUT_BOXES``; left out of the step's
        parameters then, so that earlier runs' steps stay valid)."""
        name = type(self).__name__
        check_int(f"{name}.max_input_boxes", max_input_boxes, 1, optional=True)
        check_number(f"{name}.max_box_area_ratio", max_box_area_ratio, 0, low_open=True, optional=True)
        if not isinstance(prompt_template, str) or "{bbox}" not in prompt_template:
            raise ConfigError(f"{name}.prompt_template must contain '{{bbox}}' (the box's normalized coordinates)")
        self.serving = serving
        self.bbox_format = check_bbox_format(bbox_format, name)
        self.normalized = normalized
        self.max_box_area_ratio = max_box_area_ratio
        self.max_input_boxes = max_input_boxes
        self.input_box_cap = MAX_INPUT_BOXES if max_input_boxes is None else int(max_input_boxes)
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.sampling = sampling  # None: the serving's own sampling settings
        self.images = PairLoader()

    def input_columns(self, input_bbox_key: str = BBOX_KEY, **keys: Any) -> list[str]:
        return [*super().input_columns(**keys), key_column(input_bbox_key)]

    def provenance(self) -> dict[str, Any]:
        return vlm_provenance(self.serving, self.sampling)

    def chunks_in_flight(self) -> int:
        """``process`` keeps no per-chunk state: chunks may overlap as far as the serving wants."""
        return self.serving.concurrent_chunks

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        out = frame.copy()
        errors = error_list(out)
        raw_boxes = box_values(out, keys["input_bbox_key"])  # a column, a dotted path, or Data-Juicer's meta
        pairs = self.images.pairs_at(out, keys, range(len(out)), errors)
        all_decisions: list[list[dict[str, Any]]] = [[] for _ in range(len(out))]
        conversations: list[Conversation] = []
        targets: list[tuple[dict[str, Any], int]] = []  # (decision, 1 or 2) per request
        sent: list[list[dict[str, Any]]] = [[] for _ in range(len(out))]  # per row: the boxes asked about
        for position, pair in pairs.items():
            image1, image2 = pair
            raw = raw_boxes[position]
            try:
                decisions = candidate_decisions(raw, self.bbox_format, self.normalized, image1.size, self.input_box_cap)
            except RowError as exc:
                set_row_errors(errors, position, exc)
                continue
            all_decisions[position] = decisions
            for decision in kept(decisions):
                if self._too_large(decision, image1.size):
                    continue
                prompt = self.prompt_template.format(bbox=normalized_box_text(decision["bbox_xyxy"], image1.size))
                sent[position].append(decision)
                for which, image in ((1, image1), (2, image2)):
                    conversations.append(build_conversation(prompt, [image], self.system_prompt))
                    targets.append((decision, which))
        for (decision, which), completion in zip(targets, self.serving.chat(conversations, self.sampling), strict=True):
            if completion.ok:
                decision[f"region_caption{which}"] = completion.text
            else:
                fail(decision, DROP_REGION_CAPTION, f"region caption of image {which}", str(completion.error))
        for position, boxes in enumerate(sent):
            errors[position] = request_failure(boxes, "region caption") or errors[position]
        log.info(describe_drops(DROP_AREA, all_decisions) + f"; {len(conversations)} region requests in one call")
        out[keys["decisions_key"]] = all_decisions
        out[ERROR_COLUMN] = errors
        return out

    def chunk_metrics(
        self, frame: pd.DataFrame, decisions_key: str = DECISIONS_KEY, input_bbox_key: str = BBOX_KEY, **_: Any
    ) -> dict[str, float]:
        """The box counts, and ``boxes_beyond_max_input_boxes``: boxes of the input not read (counted as dropped
        at "parse" in the keep rate)."""
        metrics = super().chunk_metrics(frame, decisions_key=decisions_key)
        counts = [input_box_count(raw) for raw in box_values(frame, input_bbox_key)]
        beyond = sum(max(0, count - self.input_box_cap) for count in counts)
        if beyond:
            rows = sum(count > self.input_box_cap for count in counts)
            log.warning(f"{beyond} boxes beyond max_input_boxes={self.input_box_cap} in {rows} row(s) were not read")
        metrics["boxes_beyond_max_input_boxes"] = beyond
        total = f"boxes_after_{DROP_PARSE}_total"
        if total in metrics:
            metrics[total] += beyond
        return metrics

    def _too_large(self, decision: dict[str, Any], size: tuple[int, int]) -> bool:
        ratio = self.max_box_area_ratio
        if ratio is None:
            return False
        share = box_area(decision["bbox_xyxy"]) / float(size[0] * size[1])
        if share > ratio:
            drop(decision, DROP_AREA, f"box covers {share:.1%} of the image, above max_box_area_ratio={ratio:g}")
            return True
        return False
