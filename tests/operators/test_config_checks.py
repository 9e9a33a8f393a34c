"""Configs and operators check their values when built: a ConfigError (a UserError, exit 2, one
line) naming the field and the allowed values, instead of a traceback when the step runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dataflow_mm.common.errors import ConfigError, UserError
from dataflow_mm.imaging.bbox import BOX_FORMATS
from dataflow_mm.operators.imgdiff.area_proposer import ImgDiffDifferenceAreaProposer
from dataflow_mm.operators.imgdiff.fused_generator import ImgDiffDifferenceCaptionGenerator
from dataflow_mm.operators.imgdiff.step1_region_captioner import ImgDiffRegionCaptioner
from dataflow_mm.operators.imgdiff.step5_difference_captioner import ImgDiffDifferenceCaptioner
from dataflow_mm.operators.region_caption.image_bbox_generator import ExistingBBoxDataGenConfig, ImageBboxGenerator
from dataflow_mm.serving.api_serving import APIVLMServing_openai
from tests.support.fake_serving import FakeVLMServing


def test_the_issues_config_is_refused_when_built_naming_field_and_allowed_values() -> None:
    with pytest.raises(ConfigError) as error:
        ExistingBBoxDataGenConfig(bbox_format="xyhw", jpeg_quality=500, line_width=-3)
    message = str(error.value)
    assert "ExistingBBoxDataGenConfig.bbox_format" in message and "'xyhw'" in message
    assert all(fmt in message for fmt in BOX_FORMATS) and "\n" not in message
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)


BAD: list[tuple[str, Callable[[], Any], str]] = [
    ("jpeg_quality", lambda: ExistingBBoxDataGenConfig(jpeg_quality=500), "from 1 to 100"),
    ("line_width", lambda: ExistingBBoxDataGenConfig(line_width=-3), ">= 1 (or None)"),
    ("max_boxes", lambda: ExistingBBoxDataGenConfig(max_boxes=0), ">= 1"),
    ("num_workers", lambda: ExistingBBoxDataGenConfig(num_workers=0), ">= 1"),
    ("max_boxes", lambda: ExistingBBoxDataGenConfig(max_boxes=2.5), "integer"),
    ("ImgDiffDifferenceAreaProposer.bbox_format", lambda: ImgDiffDifferenceAreaProposer(bbox_format="yxyx"), "xyxy"),
    ("ImgDiffDifferenceAreaProposer.min_area_ratio", lambda: ImgDiffDifferenceAreaProposer(min_area_ratio=2), "<= 1"),
    ("ImgDiffDifferenceAreaProposer.threshold", lambda: ImgDiffDifferenceAreaProposer(threshold=float("nan")), ">= 0"),
    ("jpeg_quality", lambda: ImgDiffDifferenceCaptioner(FakeVLMServing(), jpeg_quality=0), "from 1 to 100"),
    ("box_line_width", lambda: ImgDiffDifferenceCaptioner(FakeVLMServing(), box_line_width=0), ">= 1"),
    ("empty_result", lambda: ImgDiffDifferenceCaptioner(FakeVLMServing(), empty_result="x"), "one of"),
    ("max_box_area_ratio", lambda: ImgDiffRegionCaptioner(FakeVLMServing(), max_box_area_ratio=0), "> 0"),
    (
        "ImgDiffDifferenceCaptionGenerator.bbox_format",
        lambda: ImgDiffDifferenceCaptionGenerator(serving=FakeVLMServing(), bbox_format="xyhw"),
        "cxcywh",
    ),
    ("max_retries", lambda: APIVLMServing_openai("http://127.0.0.1:9/v1", "m", max_retries=-1), ">= 0"),
]


@pytest.mark.parametrize(("field", "build", "allowed"), BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_each_bad_value_names_its_field_and_what_is_allowed(field: str, build: Callable[[], Any], allowed: str) -> None:
    with pytest.raises(ConfigError) as error:
        build()
    assert field in str(error.value) and allowed in str(error.value)


def test_a_field_set_after_building_the_config_is_checked_by_the_operator() -> None:
    config = ExistingBBoxDataGenConfig()
    config.jpeg_quality = 500
    with pytest.raises(ConfigError, match="jpeg_quality"):
        ImageBboxGenerator(config)


def test_good_values_pass() -> None:
    for fmt in BOX_FORMATS:
        ExistingBBoxDataGenConfig(bbox_format=fmt, jpeg_quality=100, line_width=None, num_workers=None)
    ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=1, jpeg_quality=1, line_width=1))


SCRIPT = textwrap.dedent(
    """
    from dataflow_mm.operators.region_caption.image_bbox_generator import ExistingBBoxDataGenConfig, ImageBboxGenerator
    from dataflow_mm.pipeline.script import run_main

    def main():
        ImageBboxGenerator(ExistingBBoxDataGenConfig(bbox_format="xyhw", jpeg_quality=500, line_width=-3))

    if __name__ == "__main__":
        run_main(main)
    """
)


def test_a_script_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bbox_format" in lines[0] and "Traceback" not in done.stderr
