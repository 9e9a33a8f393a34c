"""Open-vocabulary detection: boxes for text queries with OWLv2 / OWL-ViT through transformers, batched.

``OwlDetector("google/owlv2-base-patch16-ensemble").detect(images, queries)`` finds, in each image,
boxes for that image's own queries (e.g. the nouns that changed between two captions). All
images go through the model ``batch_size`` at a time (one forward pass, one model call each,
counted in ``stats.calls``), queries padded per batch by the processor. Each image gets at most
``max_boxes`` detections scored at least ``threshold``, after class-agnostic NMS at ``iou``.

Boxes come back in pixel xyxy of the image as given: OWLv2's processor pads each image to a
square (bottom/right) before resizing, so its normalized boxes are scaled by the long side;
OWL-ViT's resizes without padding, so by width and height.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import InvalidBoxError, UserError
from dataflow_mm.imaging.bbox import Box, clip_box
from dataflow_mm.imaging.nms import kept_indices
from dataflow_mm.scoring._common import LazyScorer, batches

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DETECTOR_MODEL_TYPES = ("owlv2", "owlvit")
MIN_BOX_SIDE = 2.0  # pixels: thinner boxes (slivers at the padding's edge) are no object


@dataclass(frozen=True)
class Detection:
    """One detected box: pixel xyxy, the detector's score and the query it answers."""

    box: Box
    score: float
    label: str


class OwlDetector(LazyScorer):
    """Text-queried boxes from an OWLv2 or OWL-ViT model (hub id or local folder)."""

    tiny_kind = "owlv2"
    default_model = DEFAULT_DETECTOR
    default_batch_size = 16
    describe_key = "detector"
    kind = "owl"

    def __init__(
        self, *args: Any, threshold: float = 0.05, iou: float = 0.5, max_boxes: int = 10, **kwargs: Any
    ) -> None:
        """``LazyScorer``'s arguments, then the score ``threshold``, the NMS ``iou`` and ``max_boxes`` per image."""
        super().__init__(*args, **kwargs)
        if self.model_name_or_path.endswith(".pt"):
            raise UserError(
                f"{self.model_name_or_path} looks like a FastSAM/YOLO checkpoint; this generator detects with an "
                f"OWLv2 or OWL-ViT model loaded through transformers (default {DEFAULT_DETECTOR})"
            )
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be at least 1, not {max_boxes}")
        self.threshold = float(threshold)
        self.iou = float(iou)
        self.max_boxes = int(max_boxes)
        self._pads_to_square = True

    def _settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "iou": self.iou, "max_boxes": self.max_boxes}

    def _load(self, folder: Path) -> None:
        transformers = require("transformers", "scoring")
        config = transformers.AutoConfig.from_pretrained(str(folder))
        if config.model_type not in DETECTOR_MODEL_TYPES:
            raise UserError(
                f"{folder} holds a {config.model_type!r} model; the detector needs one of "
                f"{', '.join(DETECTOR_MODEL_TYPES)} (OWLv2 / OWL-ViT)"
            )
        self._pads_to_square = config.model_type == "owlv2"
        self._processor = transformers.AutoProcessor.from_pretrained(str(folder))
        model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(str(folder))
        self._model = model.to(self.device_in_use).eval()

    def detect(self, images: Sequence[Image.Image], queries: Sequence[Sequence[str]]) -> list[list[Detection]]:
        """For each image, the boxes of its queries (best first); images without queries get ``[]``."""
        if len(images) != len(queries):
            raise ValueError(f"detect needs one query list per image, got {len(images)} and {len(queries)}")
        results: list[list[Detection]] = [[] for _ in images]
        todo = [i for i, q in enumerate(queries) if len(q)]
        if not todo:
            return results
        self.load()
        for chunk in batches(todo, self.batch_size):
            found = self._forward([images[i] for i in chunk], [[str(q) for q in queries[i]] for i in chunk])
            for i, detections in zip(chunk, found, strict=True):
                results[i] = detections
        return results

    def _forward(self, images: list[Image.Image], queries: list[list[str]]) -> list[list[Detection]]:
        torch = require("torch", "scoring")
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        inputs = self._processor(text=queries, images=rgb, return_tensors="pt", truncation=True)
        inputs = inputs.to(self.device_in_use)
        with torch.inference_mode():
            output = self._model(**inputs)
        self.stats.calls += 1
        self.stats.items += len(images)
        logits = output.logits.float().sigmoid().cpu()
        boxes = output.pred_boxes.float().cpu()
        return [self._select(logits[i], boxes[i], image.size, queries[i]) for i, image in enumerate(rgb)]

    def _select(self, probs: Any, boxes: Any, size: tuple[int, int], queries: list[str]) -> list[Detection]:
        """Threshold, best query per box, pixel boxes, NMS and the top ``max_boxes``."""
        width, height = size
        scale_x, scale_y = (max(size), max(size)) if self._pads_to_square else (width, height)
        best, label = probs[:, : len(queries)].max(dim=-1)
        candidates: list[Detection] = []
        for score, query, (cx, cy, w, h) in zip(best.tolist(), label.tolist(), boxes.tolist(), strict=True):
            if score < self.threshold:
                continue
            xyxy = ((cx - w / 2) * scale_x, (cy - h / 2) * scale_y, (cx + w / 2) * scale_x, (cy + h / 2) * scale_y)
            try:
                box = clip_box(xyxy, size)
            except InvalidBoxError:  # empty, or outside the image (in OWLv2's padding)
                continue
            if min(box[2] - box[0], box[3] - box[1]) < MIN_BOX_SIDE:
                continue
            candidates.append(Detection(box, round(float(score), 6), queries[query]))
        keep = kept_indices([c.box for c in candidates], [c.score for c in candidates], self.iou)
        return [candidates[i] for i in keep[: self.max_boxes]]
