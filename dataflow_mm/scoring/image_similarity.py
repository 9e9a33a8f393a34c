"""Image-pair similarity: cosine of CLIP image embeddings, batched (Data-Juicer's ``image_pair_similarity_filter``).

``ClipImageSimilarity("openai/clip-vit-base-patch32").similarity(images_a, images_b)`` embeds all
images of both lists together (``batch_size`` per forward pass of the vision tower, one model call
each, counted in ``stats.calls``) and returns the cosine of each pair, in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import UserError
from dataflow_mm.scoring._common import LazyScorer, batches
from dataflow_mm.scoring.text_similarity import DEFAULT_CLIP


class ClipImageSimilarity(LazyScorer):
    """Cosine similarity of CLIP image embeddings (``get_image_features``, the projected embedding)."""

    tiny_kind = "clip"
    default_model = DEFAULT_CLIP
    kind = "clip_image"

    def _load(self, folder: Path) -> None:
        transformers = require("transformers", "scoring")
        # AutoProcessor, not AutoImageProcessor: the latter needs torchvision in transformers < 5.2x, while the
        # processor falls back to the PIL image processor (tested on the declared minimum, 5.5).
        processor = transformers.AutoProcessor.from_pretrained(str(folder))
        self._processor = getattr(processor, "image_processor", processor)
        model = transformers.AutoModel.from_pretrained(str(folder))
        if not hasattr(model, "get_image_features"):
            raise UserError(f"{folder} holds a {type(model).__name__}, which has no CLIP image encoder")
        self._model = model.to(self.device_in_use).eval()

    def similarity(self, images_a: Sequence[Image.Image], images_b: Sequence[Image.Image]) -> list[float]:
        """Cosine similarity of each ``(images_a[i], images_b[i])`` pair's embeddings, in order."""
        if len(images_a) != len(images_b):
            raise ValueError(f"similarity needs two lists of equal length, got {len(images_a)} and {len(images_b)}")
        if not images_a:
            return []
        self.load()
        torch = require("torch", "scoring")
        images = [*images_a, *images_b]
        vectors = [self._embed(chunk) for chunk in batches(images, self.batch_size)]
        table = torch.nn.functional.normalize(torch.cat(vectors).float(), dim=-1)
        n = len(images_a)
        cosine = (table[:n] * table[n:]).sum(dim=-1).clamp(-1.0, 1.0)
        return [0.0 if math.isnan(v) else float(v) for v in cosine.cpu().tolist()]

    def _embed(self, images: list[Image.Image]) -> Any:
        torch = require("torch", "scoring")
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        inputs = self._processor(images=rgb, return_tensors="pt").to(self.device_in_use)
        with torch.inference_mode():
            features = self._model.get_image_features(**inputs)
        self.stats.calls += 1
        self.stats.items += len(images)
        # transformers 5 returns an output object whose pooler_output is the projected embedding.
        return getattr(features, "pooler_output", features)
