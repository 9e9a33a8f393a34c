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
    "ImageBboxGenerator": "dataflow_mm.operators.region_caption.image_bbox_generator",
    "ExistingBBoxDataGenConfig": "dataflow_mm.operators.region_caption.image_bbox_generator",
    "PromptedVQAGenerator": "dataflow_mm.operators.region_caption.prompted_vqa_generator",
    "RegionCaptionParser": "dataflow_mm.operators.region_caption.caption_parser",
    "RegionCaptionVerifier": "dataflow_mm.operators.region_caption.caption_verifier",
    "ImgDiffDifferenceCaptionGenerator": "dataflow_mm.operators.imgdiff.fused_generator",
    "ImgDiffDifferenceAreaProposer": "dataflow_mm.operators.imgdiff.area_proposer",
    "ImgDiffRegionCaptioner": "dataflow_mm.operators.imgdiff.step1_region_captioner",
    "ImgDiffImageTextMatchingFilter": "dataflow_mm.operators.imgdiff.step2_itm_filter",
    "ImgDiffCaptionSimilarityFilter": "dataflow_mm.operators.imgdiff.step4_similarity_filter",
    "ImgDiffDifferenceCaptioner": "dataflow_mm.operators.imgdiff.step5_difference_captioner",
    "BlipITMScorer": "dataflow_mm.scoring.image_text_matching",
    "ClipTextSimilarity": "dataflow_mm.scoring.text_similarity",
    "SentenceTransformerSimilarity": "dataflow_mm.scoring.text_similarity",
    "OperatorABC": "dataflow_mm.core.operator",
    "KeySpec": "dataflow_mm.core.keys",
    "ParamSpec": "dataflow_mm.core.params",
    "LLMServingABC": "dataflow_mm.compat",
    "RayRunner": "dataflow_mm.engine.ray_runner",
    "LocalRunner": "dataflow_mm.engine.local_runner",
    "load_pipeline_script": "dataflow_mm.pipeline.templates",
    "create_serving": "dataflow_mm.serving.factory",
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


# The package root is the top of the house: importing it installs the engine as the default dispatcher of
# operator calls (core never imports the engine), so ``op.run(storage)`` runs wherever dataflow_mm is used.
import dataflow_mm.engine  # noqa: E402, F401
