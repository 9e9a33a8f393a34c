"""Old import path of ``dataflow_mm.models.resolver`` (model name or folder -> local folder)."""

from dataflow_mm.models.resolver import (
    CONFIG_FILE,
    CONFIG_HASH_FILES,
    MODEL_FILE_PATTERNS,
    config_sha256,
    hf_cache_dir,
    is_offline,
    resolve_model_path,
)

__all__ = [
    "CONFIG_FILE",
    "CONFIG_HASH_FILES",
    "MODEL_FILE_PATTERNS",
    "config_sha256",
    "hf_cache_dir",
    "is_offline",
    "resolve_model_path",
]
