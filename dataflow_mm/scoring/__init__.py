"""Batch scorers for filtering: BLIP image-text matching and caption text similarity.

Each loads its model lazily once, runs on CUDA when available (``device="auto"``), scores many
items per forward pass and counts its model calls in ``.stats``.
"""

from dataflow_mm.models.device import resolve_device
from dataflow_mm.scoring.image_text_matching import DEFAULT_BLIP_ITM, BlipITMScorer
from dataflow_mm.scoring.text_similarity import (
    DEFAULT_CLIP,
    AutoTextSimilarity,
    ClipTextSimilarity,
    SentenceTransformerSimilarity,
    TextSimilarity,
    similarity_kind_of,
    text_similarity_model,
)

__all__ = [
    "DEFAULT_BLIP_ITM",
    "DEFAULT_CLIP",
    "AutoTextSimilarity",
    "BlipITMScorer",
    "ClipTextSimilarity",
    "SentenceTransformerSimilarity",
    "TextSimilarity",
    "resolve_device",
    "similarity_kind_of",
    "text_similarity_model",
]
