"""dataflow-mm: synthesize multimodal training data with vision-language models.

The public names are importable from the package root; heavy dependencies (torch,
transformers, vllm, httpx) load only when the class that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FileStorage": "dataflow_mm.storage.file_storage",
    "ImageBboxGenerator": "dataflow_mm.operators.image_bbox_generator",
    "ExistingBBoxDataGenConfig": "dataflow_mm.operators.image_bbox_generator",
    "PromptedVQAGenerator": "dataflow_mm.operators.prompted_vqa_generator",
    "RegionCaptionParser": "dataflow_mm.operators.region_captions",
    "OperatorABC": "dataflow_mm.operators.base",
    "PipelineABC": "dataflow_mm.pipeline.base",
    "RunSummary": "dataflow_mm.pipeline.summary",
    "VLMServing": "dataflow_mm.serving.base",
    "SamplingParams": "dataflow_mm.serving.base",
    "Completion": "dataflow_mm.serving.base",
    "LocalModelVLMServing_vllm": "dataflow_mm.serving.vllm_serving",
    "LocalModelVLMServing_hf": "dataflow_mm.serving.hf_serving",
    "APIVLMServing_openai": "dataflow_mm.serving.api_serving",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dataflow_mm' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
