"""Operators: batch transforms over pandas DataFrames, one file each."""

from dataflow_mm.operators.base import OperatorABC, StepResult
from dataflow_mm.operators.image_bbox_generator import ExistingBBoxDataGenConfig, ImageBboxGenerator
from dataflow_mm.operators.prompted_vqa_generator import PromptedVQAGenerator
from dataflow_mm.operators.region_captions import RegionCaptionParser, parse_region_captions

__all__ = [
    "ExistingBBoxDataGenConfig",
    "ImageBboxGenerator",
    "OperatorABC",
    "PromptedVQAGenerator",
    "RegionCaptionParser",
    "StepResult",
    "parse_region_captions",
]
