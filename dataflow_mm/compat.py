"""What DataFlow-MM users write, accepted here: its class names, and where its scripts import them from.

A DataFlow-MM script runs with only its imports changed: ``from dataflow.utils.storage import
FileStorage`` becomes ``from dataflow_mm import FileStorage`` (``DATAFLOW_MM_IMPORTS`` lists each
path and the name it becomes). The one class DataFlow-MM names differently is its serving base,
``LLMServingABC``. DataFlow-MM's argument names (``key_name_of_api_key``, ``vllm_top_k``,
``hf_model_name_or_path``...) are keyword arguments of the classes themselves, accepted there.
"""

from __future__ import annotations

from dataflow_mm.serving.base import VLMServing

LLMServingABC = VLMServing  # DataFlow-MM's name (dataflow.core) of the serving base class

# DataFlow-MM import path -> the name to import from dataflow_mm (or dataflow_mm.compat for LLMServingABC).
DATAFLOW_MM_IMPORTS: dict[str, str] = {
    "dataflow.utils.storage.FileStorage": "FileStorage",
    "dataflow.core.OperatorABC": "OperatorABC",
    "dataflow.core.LLMServingABC": "LLMServingABC",
    "dataflow.serving.local_model_vlm_serving.LocalModelVLMServing_vllm": "LocalModelVLMServing_vllm",
    "dataflow.serving.api_vlm_serving_openai.APIVLMServing_openai": "APIVLMServing_openai",
    "dataflow.operators.core_vision.ImageBboxGenerator": "ImageBboxGenerator",
    "dataflow.operators.core_vision.generate.image_bbox_generator.ImageBboxGenerator": "ImageBboxGenerator",
    "dataflow.operators.core_vision.generate.image_bbox_generator.ExistingBBoxDataGenConfig": (
        "ExistingBBoxDataGenConfig"
    ),
    "dataflow.operators.core_vision.PromptedVQAGenerator": "PromptedVQAGenerator",
    "dataflow.operators.core_vision.generate.prompted_vqa_generator.PromptedVQAGenerator": "PromptedVQAGenerator",
}
