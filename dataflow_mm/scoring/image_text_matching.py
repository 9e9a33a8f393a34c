"""BLIP image-text matching: the probability that an image shows what a text says, batched.

``BlipITMScorer("Salesforce/blip-itm-base-coco").score(images, texts)`` returns one float in
[0, 1] per pair: ``softmax(itm_score)[:, 1]`` of ``BlipForImageTextRetrieval`` with the ITM head.
The model loads lazily on the first call and stays loaded until ``cleanup()``; every forward
pass scores up to ``batch_size`` pairs and counts as one model call (``stats.calls``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from dataflow_mm.common.deps import require
from dataflow_mm.scoring._common import LazyScorer, batches

DEFAULT_BLIP_ITM = "Salesforce/blip-itm-base-coco"


class BlipITMScorer(LazyScorer):
    """Image-text match probabilities from a BLIP ITM model (hub id or local folder)."""

    tiny_kind = "blip_itm"
    default_model = DEFAULT_BLIP_ITM
    kind = "blip_itm"

    def __init__(self, *args: Any, max_text_tokens: int | None = None, **kwargs: Any) -> None:
        """``LazyScorer``'s arguments; ``max_text_tokens`` truncates the texts (default: the model's limit)."""
        super().__init__(*args, **kwargs)
        self.max_text_tokens = max_text_tokens

    def _load(self, folder: Path) -> None:
        transformers = require("transformers", "scoring")
        self._processor = transformers.AutoProcessor.from_pretrained(str(folder))
        model = transformers.BlipForImageTextRetrieval.from_pretrained(str(folder))
        self._model = model.to(self.device_in_use).eval()

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """Match probability in [0, 1] of each ``(image, text)`` pair, in order (batched)."""
        if len(images) != len(texts):
            raise ValueError(f"score needs as many images as texts, got {len(images)} and {len(texts)}")
        if not images:
            return []
        self.load()
        pairs = list(zip(images, texts, strict=True))
        scores: list[float] = []
        for chunk in batches(pairs, self.batch_size):
            scores.extend(self._forward([p[0] for p in chunk], [p[1] for p in chunk]))
        return scores

    def _forward(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        torch = require("torch", "scoring")
        text_kwargs: dict[str, Any] = {"padding": True, "truncation": True}
        if self.max_text_tokens:
            text_kwargs["max_length"] = self.max_text_tokens
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        inputs = self._processor(images=rgb, text=[str(t) for t in texts], return_tensors="pt", **text_kwargs)
        inputs = inputs.to(self.device_in_use)
        with torch.inference_mode():
            output = self._model(**inputs, use_itm_head=True)
        self.stats.calls += 1
        self.stats.items += len(texts)
        return [float(v) for v in output.itm_score.float().softmax(dim=-1)[:, 1].cpu().tolist()]
