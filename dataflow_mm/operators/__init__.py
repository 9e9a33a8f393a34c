"""Operators: batch transforms over pandas DataFrames, one file each."""

from dataflow_mm.operators.base import OperatorABC, StepResult
from dataflow_mm.operators.image_bbox_generator import ExistingBBoxDataGenConfig, ImageBboxGenerator
from dataflow_mm.operators.imgdiff_area_generator import ImgDiffDifferenceAreaGenerator
from dataflow_mm.operators.imgdiff_area_proposer import ImgDiffDifferenceAreaProposer
from dataflow_mm.operators.imgdiff_difference_caption_generator import ImgDiffDifferenceCaptionGenerator
from dataflow_mm.operators.imgdiff_difference_captioner import ImgDiffDifferenceCaptioner
from dataflow_mm.operators.imgdiff_itm_filter import ImgDiffImageTextMatchingFilter
from dataflow_mm.operators.imgdiff_region_captioner import ImgDiffRegionCaptioner
from dataflow_mm.operators.imgdiff_similarity_filter import ImgDiffCaptionSimilarityFilter
from dataflow_mm.operators.prompted_vqa_generator import PromptedVQAGenerator
from dataflow_mm.operators.region_caption_verifier import RegionCaptionVerifier
from dataflow_mm.operators.region_captions import RegionCaptionParser, parse_region_captions

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
