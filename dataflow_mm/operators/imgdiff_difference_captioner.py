"""Img-Diff step 5: mark each kept box in red on both images, join them, ask the VLM for the difference.

For each kept box, both images get a red outline around the box (grown by ``box_padding`` px and
clamped to the image), are joined side by side with a black bar, and the panel goes to the VLM
with the original's prompt (which quotes both region captions). All panels of the chunk go into
ONE ``serving.chat`` call. Panels stay in memory; with ``keep_difference_images`` they are also
written as content-named JPEGs under the cache path (atomically, so nothing half-written or
temporary is ever left behind).

The row's final columns are then written: ``region_caption1``, ``region_caption2``, ``bboxes``
(the kept boxes, as given) and ``bbox_difference_captions``, lists of equal length. A row with no
kept box gets the seed's empty result: ``[""]``, ``[""]``, ``[[0, 0, 0, 0]]``, ``[""]``
(``empty_result="empty"`` gives empty lists instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from dataflow_mm.checks import check_choice, check_int
from dataflow_mm.errors import ERROR_COLUMN
from dataflow_mm.imaging.draw import draw_red_box, side_by_side
from dataflow_mm.operators.base import OperatorABC
from dataflow_mm.operators.imgdiff_common import (
    CAPTION1_KEY,
    CAPTION2_KEY,
    DECISIONS_KEY,
    DIFFERENCE_IMAGES_KEY,
    DIFFERENCE_KEY,
    DROP_DIFFERENCE,
    PAIR_KEYS,
    PairLoader,
    describe_drops,
    fail,
    kept,
    log,
    request_failure,
    vlm_provenance,
)
from dataflow_mm.operators.imgdiff_operator import ImgDiffOperator
from dataflow_mm.operators.keys import KeySpec
from dataflow_mm.operators.params import ParamSpec
from dataflow_mm.serving.base import Conversation, SamplingParams, VLMServing
from dataflow_mm.serving.messages import build_conversation
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.media import prepare_image_folder, write_jpeg

DEFAULT_DIFFERENCE_PROMPT = (
    "Analyse the left image and the right image (separated by the black vertical bar). "
    "The detail within the red bounding box in the left image is: {caption1}, "
    "the detail within the red bounding box in the right image is: {caption2}. "
    "What is their difference? Answer with a few concise sentences."
)
EMPTY_RESULTS = ("seed", "empty")
DIFFERENCE_IMAGE_DIR = "imgdiff_difference_images"


def difference_panel(
    image1: Image.Image,
    image2: Image.Image,
    xyxy: list[float],
    padding: int = 5,
    line_width: int = 3,
    bar_width: int = 20,
) -> Image.Image:
    """Both images with the red box, side by side with a black bar between them."""
    left = draw_red_box(image1, xyxy, padding=padding, width=line_width)
    right = draw_red_box(image2, xyxy, padding=padding, width=line_width)
    return side_by_side(left, right, bar_width=bar_width, bar_color=(0, 0, 0))


class ImgDiffDifferenceCaptioner(ImgDiffOperator, OperatorABC):
    """Ask the VLM what differs inside each kept box (all boxes of a chunk in one call); write the final columns."""

    key_spec = KeySpec(
        defaults={
            **PAIR_KEYS,
            "decisions_key": DECISIONS_KEY,
            "output_bbox_key": "bboxes",
            "output_caption1_key": CAPTION1_KEY,
            "output_caption2_key": CAPTION2_KEY,
            "output_difference_key": DIFFERENCE_KEY,
            "output_image_key": DIFFERENCE_IMAGES_KEY,
        },
        reads=("input_image1_key", "input_image2_key", "decisions_key"),
        writes=(
            "output_caption1_key",
            "output_caption2_key",
            "output_bbox_key",
            "output_difference_key",
            "decisions_key",
        ),
    )
    holds_model = True
    counted_steps = (DROP_DIFFERENCE,)
    param_spec = ParamSpec(exclude=("sampling",))  # recorded by provenance, with the serving

    def __init__(
        self,
        serving: VLMServing,
        keep_difference_images: bool = False,
        image_output_dir: str | None = None,
        prompt_template: str = DEFAULT_DIFFERENCE_PROMPT,
        system_prompt: str = "",
        sampling: SamplingParams | None = None,
        box_padding: int = 5,
        box_line_width: int = 3,
        bar_width: int = 20,
        empty_result: str = "seed",
        jpeg_quality: int = 90,
    ) -> None:
        name = type(self).__name__
        check_choice(f"{name}.empty_result", empty_result, EMPTY_RESULTS)
        check_int(f"{name}.box_padding", box_padding, 0)
        check_int(f"{name}.box_line_width", box_line_width, 1)
        check_int(f"{name}.bar_width", bar_width, 0)
        check_int(f"{name}.jpeg_quality", jpeg_quality, 1, 100)
        self.serving = serving
        self.keep_difference_images = keep_difference_images
        self.image_output_dir = image_output_dir
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.sampling = sampling  # None: the serving's own sampling settings
        self.box_padding = box_padding
        self.box_line_width = box_line_width
        self.bar_width = bar_width
        self.empty_result = empty_result
        self.jpeg_quality = jpeg_quality
        self.images = PairLoader()
        self._image_dir: Path | None = Path(image_output_dir) if image_output_dir else None

    def output_columns(self, output_image_key: str = DIFFERENCE_IMAGES_KEY, **keys: Any) -> list[str]:
        columns = super().output_columns(**keys)
        return [*columns, output_image_key] if self.keep_difference_images else columns

    def provenance(self) -> dict[str, Any]:
        return vlm_provenance(self.serving, self.sampling)

    def prepare(self, storage: FileStorage) -> None:
        super().prepare(storage)
        self._image_dir = Path(self.image_output_dir or Path(storage.cache_path) / DIFFERENCE_IMAGE_DIR)
        if self.keep_difference_images:
            prepare_image_folder(self._image_dir)

    def chunks_in_flight(self) -> int:
        """``process`` keeps no per-chunk state: chunks may overlap as far as the serving wants."""
        return self.serving.concurrent_chunks

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        out, errors, all_decisions, pairs = self.kept_box_rows(frame, keys)
        names1 = out[keys["input_image1_key"]].tolist()
        conversations: list[Conversation] = []
        targets: list[tuple[dict[str, Any], Image.Image, str]] = []
        for position, pair in pairs.items():
            for decision in kept(all_decisions[position]):
                panel = difference_panel(
                    pair[0], pair[1], decision["bbox_xyxy"], self.box_padding, self.box_line_width, self.bar_width
                )
                prompt = self.prompt_template.format(
                    caption1=decision["region_caption1"] or "", caption2=decision["region_caption2"] or ""
                )
                conversations.append(build_conversation(prompt, [panel], self.system_prompt))
                targets.append((decision, panel, str(names1[position])))
        for (decision, panel, name), completion in zip(
            targets, self.serving.chat(conversations, self.sampling), strict=True
        ):
            if not completion.ok:
                fail(decision, DROP_DIFFERENCE, "difference caption", str(completion.error))
                continue
            decision["difference_caption"] = completion.text
            if self.keep_difference_images:
                decision["difference_image"] = self._save(panel, Path(name).stem, decision["index"])
        for position in pairs:
            sent = [d for d in all_decisions[position] if d.get("kept") or d.get("dropped_at") == DROP_DIFFERENCE]
            errors[position] = request_failure(sent, "difference caption")
        log.info(describe_drops(DROP_DIFFERENCE, all_decisions) + f"; {len(conversations)} difference requests")
        results = [self._final(decisions) for decisions in all_decisions]
        columns = ("output_caption1_key", "output_caption2_key", "output_bbox_key", "output_difference_key")
        if self.keep_difference_images:
            columns += ("output_image_key",)
        for index, name in enumerate(columns):
            out[keys[name]] = [r[index] for r in results]
        out[keys["decisions_key"]] = all_decisions
        out[ERROR_COLUMN] = errors
        return out

    def _final(self, decisions: list[dict[str, Any]]) -> tuple[list[Any], ...]:
        boxes = kept(decisions)
        if not boxes:
            if self.empty_result == "seed":
                return [""], [""], [[0, 0, 0, 0]], [""], [""]
            return [], [], [], [], []
        return (
            [d["region_caption1"] for d in boxes],
            [d["region_caption2"] for d in boxes],
            [d["bbox"] for d in boxes],
            [d["difference_caption"] for d in boxes],
            [d["difference_image"] for d in boxes],
        )

    def _save(self, panel: Image.Image, stem: str, index: int) -> str:
        if self._image_dir is None:
            self._image_dir = Path(DIFFERENCE_IMAGE_DIR)
        return write_jpeg(panel, self._image_dir, f"{stem}_diff{index}", self.jpeg_quality)
