"""A pipeline's settings are declared once, as its constructor's keyword arguments; the script's flags
are generated from them and handed back under the same names."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import pytest

from dataflow_mm.pipeline.flags import add_constructor_flags, constructor_kwargs
from dataflow_mm.pipeline.script import add_serving_args
from dataflow_mm.pipeline.templates import load_pipeline_script


class MyPipeline:
    """A user's pipeline: only its constructor declares its settings."""

    def __init__(
        self,
        serving: object,
        *,
        cache_path: str = "./cache/mine",
        chunk_size: int = 16,
        min_score: float | None = None,
        keep_images: bool = False,
        propose: bool = True,
        hf_cache_dir: str | None = None,
        extra_args: dict[str, Any] | None = None,
        allow_tiny_fallback: bool = True,
    ) -> None:
        self.settings = {k: v for k, v in locals().items() if k not in ("self", "serving")}


def test_flags_come_from_the_constructor_and_go_back_to_it() -> None:
    parser = argparse.ArgumentParser()
    add_serving_args(parser, default_model="Org/VL")  # --hf_cache_dir exists already: not added twice
    add_constructor_flags(parser, MyPipeline, help={"min_score": "keep rows scoring at least this"})
    args = parser.parse_args(["--chunk_size", "4", "--min_score", "0.5", "--keep_images", "--propose", "no"])
    pipeline = MyPipeline(None, **constructor_kwargs(args, MyPipeline, allow_tiny_fallback=False))
    assert pipeline.settings == {
        "cache_path": "./cache/mine",
        "chunk_size": 4,
        "min_score": 0.5,
        "keep_images": True,
        "propose": False,
        "hf_cache_dir": None,
        "extra_args": None,
        "allow_tiny_fallback": False,
    }
    help_text = " ".join(parser.format_help().split())
    assert "--extra_args" not in help_text and "--allow_tiny_fallback" not in help_text
    assert "keep rows scoring at least this" in help_text and "rows per chunk" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--chunk_size", "four"])


@pytest.mark.parametrize(
    ("script", "pipeline_class"),
    [("image_region_caption_pipeline", "ImageRegionCaptionPipeline"), ("imgdiff_pipeline", "ImgDiffPipeline")],
)
def test_every_plain_setting_of_the_shipped_pipelines_is_a_flag_with_the_constructors_default(
    script: str, pipeline_class: str
) -> None:
    module = load_pipeline_script(script)
    cls = getattr(module, pipeline_class)
    args = vars(module.parse_args([]))
    derived = {"output_image_with_bbox_path"}  # default derived from --cache_path in main()
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.kind is not parameter.KEYWORD_ONLY or parameter.name in ("allow_tiny_fallback", "area_args"):
            continue
        assert parameter.name in args, parameter.name
        if parameter.name not in derived and parameter.name not in ("hf_cache_dir", "download_dir"):
            assert args[parameter.name] == parameter.default, parameter.name
