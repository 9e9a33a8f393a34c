"""Models: where a model folder comes from, the tiny-model fallback, and where a model runs.

Serving and scoring depend on this layer.
It depends only on ``errors``, ``logger`` and ``deps``.
"""

from dataflow_mm.models.device import cuda_available, resolve_device
from dataflow_mm.models.fallback import is_smoke_test_folder, resolve_or_tiny
from dataflow_mm.models.resolver import config_sha256, resolve_model_path
from dataflow_mm.models.tiny import is_tiny_model, tiny_model_path

__all__ = [
    "config_sha256",
    "cuda_available",
    "is_smoke_test_folder",
    "is_tiny_model",
    "resolve_device",
    "resolve_model_path",
    "resolve_or_tiny",
    "tiny_model_path",
]
