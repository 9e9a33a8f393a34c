"""Operators: batch transforms over pandas DataFrames, one file each."""

from dataflow_mm.operators.base import OperatorABC, StepResult
from dataflow_mm.operators.image_bbox_generator import ExistingBBoxDataGenConfig, ImageBboxGenerator
from dataflow_mm.operators.prompted_vqa_generator import PromptedVQAGenerator

__all__ = [
    "ExistingBBoxDataGenConfig",
    "ImageBboxGenerator",
    "OperatorABC",
    "PromptedVQAGenerator",
    "StepResult",
]
