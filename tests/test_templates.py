"""The shipped pipeline scripts import as modules, so users can subclass their pipelines without copying them."""

from __future__ import annotations

from dataflow_mm import PipelineABC
from dataflow_mm.pipeline.templates import TEMPLATE_DIRS, load_pipeline_script, template_root


def test_template_root_holds_the_scripts_and_data() -> None:
    assert all((template_root() / name).is_dir() for name in TEMPLATE_DIRS)


def test_both_pipeline_scripts_load_without_running() -> None:
    region = load_pipeline_script("image_region_caption_pipeline")
    imgdiff = load_pipeline_script("imgdiff_pipeline")
    assert issubclass(region.ImageRegionCaptionPipeline, PipelineABC)
    assert issubclass(imgdiff.ImgDiffPipeline, PipelineABC)
    assert region.parse_args([]).cache_path == "./cache/image_region_caption"
