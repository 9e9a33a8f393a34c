"""Operators: batch transforms over pandas DataFrames, one file each."""

from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.core.results import StepResult
from dataflow_mm.operators.imgdiff.area_generator import ImgDiffDifferenceAreaGenerator
from dataflow_mm.operators.imgdiff.area_proposer import ImgDiffDifferenceAreaProposer
from dataflow_mm.operators.imgdiff.fused_generator import ImgDiffDifferenceCaptionGenerator
from dataflow_mm.operators.imgdiff.step1_region_captioner import ImgDiffRegionCaptioner
from dataflow_mm.operators.imgdiff.step2_itm_filter import ImgDiffImageTextMatchingFilter
from dataflow_mm.operators.imgdiff.step4_similarity_filter import ImgDiffCaptionSimilarityFilter
from dataflow_mm.operators.imgdiff.step5_difference_captioner import ImgDiffDifferenceCaptioner
from dataflow_mm.operators.region_caption.caption_parser import RegionCaptionParser, parse_region_captions
from dataflow_mm.operators.region_caption.caption_verifier import RegionCaptionVerifier
from dataflow_mm.operators.region_caption.image_bbox_generator import ExistingBBoxDataGenConfig, ImageBboxGenerator
from dataflow_mm.operators.region_caption.prompted_vqa_generator import PromptedVQAGenerator

__all__ = [
    "ExistingBBoxDataGenConfig",
    "ImageBboxGenerator",
    "ImgDiffCaptionSimilarityFilter",
    "ImgDiffDifferenceAreaGenerator",
    "ImgDiffDifferenceAreaProposer",
    "ImgDiffDifferenceCaptionGenerator",
    "ImgDiffDifferenceCaptioner",
    "ImgDiffImageTextMatchingFilter",
    "ImgDiffRegionCaptioner",
    "OperatorABC",
    "PromptedVQAGenerator",
    "RegionCaptionParser",
    "RegionCaptionVerifier",
    "StepResult",
    "parse_region_captions",
]
