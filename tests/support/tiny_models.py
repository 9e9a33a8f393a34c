"""Tiny random-weight models for tests: a re-export of the product's ``dataflow_mm.models.tiny``.

The builders live in the product because ``--allow_tiny_fallback`` needs them; tests keep
importing them from here.
"""

from __future__ import annotations

from dataflow_mm.models.tiny import (
    DEFAULT_TINY_DIR,
    ENV_TINY_DIR,
    KINDS,
    is_tiny_model,
    tiny_model_path,
    tiny_models_root,
)
from dataflow_mm.models.tiny_builders import (
    BUILDER_VERSION,
    BUILDERS,
    MARKER_FILE,
    build_tiny_blip_itm,
    build_tiny_clip,
    build_tiny_llava_next,
    build_tiny_owlv2,
    build_tiny_qwen2_5_vl,
)
from dataflow_mm.models.tiny_tokenizers import LLAVA_NEXT_CHAT_TEMPLATE, QWEN2_5_VL_CHAT_TEMPLATE

__all__ = [
    "BUILDERS",
    "BUILDER_VERSION",
    "DEFAULT_TINY_DIR",
    "ENV_TINY_DIR",
    "KINDS",
    "LLAVA_NEXT_CHAT_TEMPLATE",
    "MARKER_FILE",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "build_tiny_blip_itm",
    "build_tiny_clip",
    "build_tiny_llava_next",
    "build_tiny_owlv2",
    "build_tiny_qwen2_5_vl",
    "is_tiny_model",
    "tiny_model_path",
    "tiny_models_root",
]
