"""Caption similarity: cosine similarity of two texts' embeddings, batched, one interface for two model kinds.

* ``ClipTextSimilarity``: CLIP's text encoder (projected embedding), as in Data-Juicer's
  ``text_pair_similarity_filter`` (default ``openai/clip-vit-base-patch32``);
* ``SentenceTransformerSimilarity``: any sentence-transformers model (e.g. all-MiniLM-L6-v2).

``similarity(texts_a, texts_b)`` embeds all texts of both lists together (``batch_size`` per
forward pass, one model call each, counted in ``stats.calls``) and returns the cosine of each
pair. ``text_similarity_model(path)`` picks the class from the model folder's own files
(``modules.json`` = sentence-transformers, ``config.json`` ``model_type`` = CLIP), never from its name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import UserError
from dataflow_mm.scoring._common import LazyScorer, batches

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json")
CLIP_MODEL_TYPES = ("clip", "clip_text_model")


class TextSimilarity(LazyScorer):
    """Base class: lazy loading, call counts and the pairwise cosine; subclasses embed texts."""

    kind = "base"
    tiny_kind: str | None = None
    default_batch_size = 64

    def similarity(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> list[float]:
        """Cosine similarity (in [-1, 1]) of each ``(texts_a[i], texts_b[i])`` pair, in order."""
        if len(texts_a) != len(texts_b):
            raise ValueError(f"similarity needs two lists of equal length, got {len(texts_a)} and {len(texts_b)}")
        if not texts_a:
            return []
        self.load()
        texts = [str(t) for t in [*texts_a, *texts_b]]
        unique = list(dict.fromkeys(texts))  # identical captions are embedded once
        vectors: list[Any] = []
        for chunk in batches(unique, self.batch_size):
            vectors.append(self._embed(chunk))
            self.stats.calls += 1
            self.stats.items += len(chunk)
        torch = require("torch", "scoring")
        table = torch.nn.functional.normalize(torch.cat(vectors).float(), dim=-1)
        index = {text: i for i, text in enumerate(unique)}
        n = len(texts_a)
        left = table[[index[t] for t in texts[:n]]]
        right = table[[index[t] for t in texts[n:]]]
        cosine = (left * right).sum(dim=-1).clamp(-1.0, 1.0)
        return [0.0 if math.isnan(v) else float(v) for v in cosine.cpu().tolist()]

    # -- subclass hooks (and ``_load``) ------------------------------------------------------
    def _release(self) -> None:
        """Drop whatever ``_load`` kept besides ``_model``."""

    def _embed(self, texts: list[str]) -> Any:
        """A ``(len(texts), dim)`` float tensor, one forward pass."""
        raise NotImplementedError


class ClipTextSimilarity(TextSimilarity):
    """Cosine of CLIP text embeddings (``get_text_features``' projected ``pooler_output``)."""

    kind = "clip_text"
    tiny_kind = "clip"

    def _load(self, folder: Path) -> None:
        transformers = require("transformers", "scoring")
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        self._model = transformers.AutoModel.from_pretrained(str(folder)).to(self.device_in_use).eval()
        if not hasattr(self._model, "get_text_features"):
            raise UserError(f"{folder} holds a {type(self._model).__name__}, which has no CLIP text encoder")

    def _release(self) -> None:
        self._tokenizer = None

    def _embed(self, texts: list[str]) -> Any:
        torch = require("torch", "scoring")
        max_length = getattr(self._model.config, "text_config", self._model.config).max_position_embeddings
        inputs = self._tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        inputs = inputs.to(self.device_in_use)
        with torch.inference_mode():
            features = self._model.get_text_features(**inputs)
        # transformers 5 returns an output object whose pooler_output is the projected embedding.
        return getattr(features, "pooler_output", features)


class SentenceTransformerSimilarity(TextSimilarity):
    """Cosine of sentence-transformers embeddings (e.g. all-MiniLM-L6-v2)."""

    kind = "sentence_transformers"
    tiny_kind = None

    def _load(self, folder: Path) -> None:
        sentence_transformers = require("sentence_transformers", "scoring", "sentence-transformers")
        self._model = sentence_transformers.SentenceTransformer(str(folder), device=self.device_in_use)

    def _embed(self, texts: list[str]) -> Any:
        return self._model.encode(
            texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False, normalize_embeddings=True
        )


def similarity_kind_of(folder: str | Path) -> str:
    """``"sentence_transformers"`` or ``"clip_text"`` from the folder's files; UserError otherwise."""
    path = Path(folder)
    if any((path / name).is_file() for name in SENTENCE_TRANSFORMERS_FILES):
        return SentenceTransformerSimilarity.kind
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path / 'config.json'} to tell which text-similarity model it is: {exc}") from exc
    model_type = str(config.get("model_type", ""))
    if model_type in CLIP_MODEL_TYPES:
        return ClipTextSimilarity.kind
    raise UserError(
        f"{path} is neither a sentence-transformers model (no {' / '.join(SENTENCE_TRANSFORMERS_FILES)}) nor a "
        f"CLIP model (config model_type {model_type!r}): cannot use it for caption similarity"
    )


class AutoTextSimilarity(TextSimilarity):
    """Lazy choice: on first use, resolve the folder and become CLIP or sentence-transformers by its config."""

    kind = "auto"
    tiny_kind = "clip"

    def _load(self, folder: Path) -> None:
        chosen = (
            ClipTextSimilarity
            if similarity_kind_of(folder) == ClipTextSimilarity.kind
            else SentenceTransformerSimilarity
        )
        self._impl: TextSimilarity | None = chosen(folder, self.device, self.batch_size)
        self._impl.device_in_use = self.device_in_use
        self._impl._load(folder)
        self._model = self._impl._model
        self.kind = chosen.kind

    def _release(self) -> None:
        if self._impl is not None:
            self._impl._model = None
            self._impl._release()
        self._impl = None

    def _embed(self, texts: list[str]) -> Any:
        assert self._impl is not None
        return self._impl._embed(texts)


def text_similarity_model(
    model_name_or_path: str | Path = DEFAULT_CLIP,
    device: str = "auto",
    batch_size: int = 64,
    allow_tiny_fallback: bool = False,
    hf_cache_dir: str | None = None,
    hf_local_dir: str | None = None,
) -> TextSimilarity:
    """A caption-similarity scorer for ``model_name_or_path``: CLIP text encoder or sentence-transformers.

    Which one is decided from the resolved folder's files when the model first loads (lazy: nothing
    is resolved or downloaded here), never from the model's name.
    """
    return AutoTextSimilarity(model_name_or_path, device, batch_size, allow_tiny_fallback, hf_cache_dir, hf_local_dir)
