"""Operator parameters are derived from the constructor, and the built-in operators' resume fingerprints never change.

The pinned values below are RESUME FINGERPRINTS: they were computed from the hand-written
``params()`` methods before parameters were derived from the constructor. A step file on disk stays
current only while its operator's fingerprint is the same, so these values must not change (a change
here silently reruns every user's cached steps). Servings and scorers are stubs with a fixed
``describe()``, so the fingerprints depend on the operators alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dataflow_mm import FileStorage, KeySpec
from dataflow_mm.core.params import ParamSpec
from dataflow_mm.operators import (
    ExistingBBoxDataGenConfig,
    ImageBboxGenerator,
    ImgDiffCaptionSimilarityFilter,
    ImgDiffDifferenceAreaGenerator,
    ImgDiffDifferenceAreaProposer,
    ImgDiffDifferenceCaptioner,
    ImgDiffDifferenceCaptionGenerator,
    ImgDiffImageTextMatchingFilter,
    ImgDiffRegionCaptioner,
    OperatorABC,
    PromptedVQAGenerator,
    RegionCaptionParser,
    RegionCaptionVerifier,
)
from dataflow_mm.operators.interop.data_juicer import DataJuicerMetaWriter
from dataflow_mm.operators.region_caption.answer_parsing import PARSER_VERSION
from dataflow_mm.operators.region_caption.caption_parser import RegionAnswerSchema
from dataflow_mm.operators.registry import operator_classes
from dataflow_mm.serving.base import SamplingParams
from dataflow_mm.storage.formats import read_table
from dataflow_mm.storage.manifest import fingerprint
from dataflow_mm.storage.table_writer import write_table


class StubModel:
    """A serving or scorer stand-in: a fixed description, nothing loaded."""

    concurrent_chunks = 1

    def __init__(self, name: str) -> None:
        self.name = name
        self.sampling = SamplingParams()

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "backend": "stub"}

    def cleanup(self) -> None:
        pass


class Template:
    """DataFlow-MM's prompt template object: ``build_prompt()`` gives the text."""

    def build_prompt(self) -> str:
        return "Describe the picture."


def _vlm() -> StubModel:
    return StubModel("vlm")


def _area_generator(**kwargs: Any) -> ImgDiffDifferenceAreaGenerator:
    return ImgDiffDifferenceAreaGenerator(
        image_similarity=StubModel("clip"), detector=StubModel("owl"), itm_scorer=StubModel("blip"), **kwargs
    )


def _fused(**kwargs: Any) -> ImgDiffDifferenceCaptionGenerator:
    return ImgDiffDifferenceCaptionGenerator(
        serving=_vlm(), itm_scorer=StubModel("blip"), text_similarity=StubModel("clip"), **kwargs
    )


# case id -> (operator factory, pinned fingerprint of its default keys)
CASES: dict[str, tuple[Any, str]] = {
    "meta_writer": (DataJuicerMetaWriter, "ff1b6288eab84262"),
    "bbox_default": (ImageBboxGenerator, "bf221d870fea000d"),
    "bbox_custom": (
        lambda: ImageBboxGenerator(
            ExistingBBoxDataGenConfig(
                max_boxes=4,
                bbox_format="xyxy",
                normalized=True,
                num_workers=3,
                input_jsonl_path="in.jsonl",
                output_jsonl_path="out.jsonl",
                line_width=2,
            ),
            prompt_template="{n} regions, please.",
        ),
        "36539a38f55cd5a9",
    ),
    "similarity_default": (lambda: ImgDiffCaptionSimilarityFilter(StubModel("clip")), "40f2c88dca881523"),
    "similarity_custom": (
        lambda: ImgDiffCaptionSimilarityFilter(
            StubModel("clip"), min_score=0, max_score=1, hf_clip="other", device="cpu", batch_size=3
        ),
        "f76ea23d5e300039",
    ),
    "area_generator_default": (_area_generator, "f437df0d3fc6394e"),
    "area_generator_custom": (
        lambda: _area_generator(
            image_pair_similarity_filter_args={"min_score_1": 0.2, "accelerator": "cuda"},
            image_segment_mapper_args={"conf": 0.1, "max_boxes": 3},
            image_text_matching_filter_args={"min_score": 0.3},
            bbox_format="xyxy",
            normalized=True,
            nms_iou=1,
            generate_for_zero_boxes=True,
            device="cpu",
            batch_size=4,
            hf_cache_dir="/tmp/hf",
        ),
        "5c14a3b704d1910b",
    ),
    "proposer_default": (ImgDiffDifferenceAreaProposer, "c7fe24c2aeed2e4c"),
    "proposer_custom": (
        lambda: ImgDiffDifferenceAreaProposer(
            bbox_format="xyxy",
            normalized=True,
            max_boxes=2,
            threshold=20,
            min_area_ratio=0.01,
            propose_for_zero_boxes=True,
        ),
        "30105d3163077e8f",
    ),
    "fused_default": (_fused, "ede8fcc17c31ed04"),
    "fused_custom": (
        lambda: _fused(
            mllm_mapper_args={"temperature": 0.0, "max_new_tokens": 64, "num_proc": 1, "seed": 3},
            image_text_matching_filter_args={"min_score": 0.2, "num_proc": 1, "any_or_all": "any"},
            text_pair_similarity_filter_args={"max_score": 0.9, "text_key_second": "target_text"},
            bbox_format="xyxy",
            normalized=True,
            max_box_area_ratio=None,
            keep_difference_images=True,
            image_output_dir="/tmp/diffs",
            device="cpu",
            empty_result="empty",
            hf_cache_dir="/tmp/hf",
            num_proc=1,
        ),
        "5b2cf5fecc0d211b",
    ),
    "captioner_default": (lambda: ImgDiffDifferenceCaptioner(_vlm()), "4112fb5ba0e1aa02"),
    "captioner_custom": (
        lambda: ImgDiffDifferenceCaptioner(
            _vlm(),
            keep_difference_images=True,
            image_output_dir="/tmp/diffs",
            prompt_template="{caption1} vs {caption2}",
            system_prompt="Be brief.",
            sampling=SamplingParams(temperature=0.0),
            box_padding=2,
            box_line_width=1,
            bar_width=10,
            empty_result="empty",
            jpeg_quality=80,
        ),
        "5fdf340ae730f0a6",
    ),
    "itm_default": (lambda: ImgDiffImageTextMatchingFilter(StubModel("blip")), "b3bdff4a53602e9c"),
    "itm_custom": (
        lambda: ImgDiffImageTextMatchingFilter(
            StubModel("blip"), min_score=0, max_score=1, hf_blip="other", device="cpu", batch_size=3
        ),
        "002435ba4d7c45b9",
    ),
    "region_captioner_default": (lambda: ImgDiffRegionCaptioner(_vlm()), "7e67172877d4a225"),
    "region_captioner_custom": (
        lambda: ImgDiffRegionCaptioner(
            _vlm(),
            bbox_format="xyxy",
            normalized=True,
            max_box_area_ratio=None,
            prompt_template="What is in {bbox}?",
            system_prompt="Be brief.",
            sampling=SamplingParams(temperature=0.0),
        ),
        "a0de82e3ef2fa9f3",
    ),
    "vqa_default": (lambda: PromptedVQAGenerator(_vlm()), "b2f43dd059b37173"),
    "vqa_custom": (
        lambda: PromptedVQAGenerator(
            _vlm(),
            system_prompt="",
            prompt_template=Template(),
            response_schema=RegionAnswerSchema(max_tokens=512, max_boxes=4),
        ),
        "2760a9ceb963387b",
    ),
    "vqa_string_template": (lambda: PromptedVQAGenerator(_vlm(), prompt_template="Describe it."), "841fe7f44f2dadf4"),
    "verifier_default": (lambda: RegionCaptionVerifier(StubModel("blip")), "88afd820fc1b71b4"),
    "verifier_custom": (
        lambda: RegionCaptionVerifier(StubModel("blip"), min_region_score=1, hf_blip="other", device="cpu"),
        "3dc7c56d0991474b",
    ),
}

# case id -> params as the hand-written params() gave them (JSON form)
PARAMS: dict[str, dict[str, Any]] = {
    "area_generator_custom": {
        "bbox_format": "xyxy",
        "generate_for_zero_boxes": True,
        "image_pair_similarity_filter_args": {
            "hf_clip": "openai/clip-vit-base-patch32",
            "max_score_1": 1.0,
            "max_score_2": 1.0,
            "min_score_1": 0.2,
            "min_score_2": 0.1,
            "num_proc": 1,
        },
        "image_segment_mapper_args": {
            "conf": 0.1,
            "imgsz": 1024,
            "iou": 0.5,
            "max_boxes": 3,
            "model_path": "google/owlv2-base-patch16-ensemble",
        },
        "image_text_matching_filter_args": {
            "hf_blip": "Salesforce/blip-itm-base-coco",
            "max_score": 1.0,
            "min_score": 0.3,
            "num_proc": 1,
        },
        "nms_iou": 1.0,
        "normalized": True,
    },
    "area_generator_default": {
        "bbox_format": "cxcywh",
        "generate_for_zero_boxes": False,
        "image_pair_similarity_filter_args": {
            "hf_clip": "openai/clip-vit-base-patch32",
            "max_score_1": 1.0,
            "max_score_2": 1.0,
            "min_score_1": 0.1,
            "min_score_2": 0.1,
            "num_proc": 1,
        },
        "image_segment_mapper_args": {
            "conf": 0.05,
            "imgsz": 1024,
            "iou": 0.5,
            "max_boxes": 10,
            "model_path": "google/owlv2-base-patch16-ensemble",
        },
        "image_text_matching_filter_args": {
            "hf_blip": "Salesforce/blip-itm-base-coco",
            "max_score": 1.0,
            "min_score": 0.1,
            "num_proc": 1,
        },
        "nms_iou": 0.5,
        "normalized": False,
    },
    "bbox_custom": {
        "config": {
            "bbox_format": "xyxy",
            "image_output_dir": None,
            "jpeg_quality": 92,
            "line_width": 2,
            "max_boxes": 4,
            "normalized": True,
            "output_jsonl_path": "out.jsonl",
            "propose_when_missing": True,
        },
        "prompt_template": "{n} regions, please.",
    },
    "bbox_default": {
        "config": {
            "bbox_format": "xywh",
            "image_output_dir": None,
            "jpeg_quality": 92,
            "line_width": None,
            "max_boxes": 10,
            "normalized": False,
            "output_jsonl_path": None,
            "propose_when_missing": True,
        },
        "prompt_template": "Describe the content of each marked region in the image. There are {n} "
        "regions: <region1> to <region{n}>.",
    },
    "captioner_custom": {
        "bar_width": 10,
        "box_line_width": 1,
        "box_padding": 2,
        "empty_result": "empty",
        "image_output_dir": "/tmp/diffs",
        "jpeg_quality": 80,
        "keep_difference_images": True,
        "prompt_template": "{caption1} vs {caption2}",
        "system_prompt": "Be brief.",
    },
    "captioner_default": {
        "bar_width": 20,
        "box_line_width": 3,
        "box_padding": 5,
        "empty_result": "seed",
        "image_output_dir": None,
        "jpeg_quality": 90,
        "keep_difference_images": False,
        "prompt_template": "Analyse the left image and the right image (separated by the "
        "black vertical bar). The detail within the red bounding box in "
        "the left image is: {caption1}, the detail within the red bounding "
        "box in the right image is: {caption2}. What is their difference? "
        "Answer with a few concise sentences.",
        "system_prompt": "",
    },
    "fused_custom": {
        "image_text_matching_filter_args": {
            "hf_blip": "Salesforce/blip-itm-base-coco",
            "max_score": 1.0,
            "min_score": 0.2,
        },
        "mllm_mapper_args": {
            "hf_model": "llava-hf/llava-v1.6-vicuna-7b-hf",
            "max_new_tokens": 64,
            "num_beams": 1,
            "seed": 3,
            "temperature": 0.0,
            "top_p": None,
        },
        "steps": {
            "ImgDiffCaptionSimilarityFilter": {"max_score": 0.9, "min_score": 0.1},
            "ImgDiffDifferenceCaptioner": {
                "bar_width": 20,
                "box_line_width": 3,
                "box_padding": 5,
                "empty_result": "empty",
                "image_output_dir": "/tmp/diffs",
                "jpeg_quality": 90,
                "keep_difference_images": True,
                "prompt_template": "Analyse the left image and "
                "the right image (separated by "
                "the black vertical bar). The "
                "detail within the red "
                "bounding box in the left "
                "image is: {caption1}, the "
                "detail within the red "
                "bounding box in the right "
                "image is: {caption2}. What is "
                "their difference? Answer with "
                "a few concise sentences.",
                "system_prompt": "",
            },
            "ImgDiffImageTextMatchingFilter": {"max_score": 1.0, "min_score": 0.2},
            "ImgDiffRegionCaptioner": {
                "bbox_format": "xyxy",
                "max_box_area_ratio": None,
                "normalized": True,
                "prompt_template": "Please provide a clear description for this region: {bbox}.",
                "system_prompt": "",
            },
        },
        "text_pair_similarity_filter_args": {
            "hf_clip": "openai/clip-vit-base-patch32",
            "max_score": 0.9,
            "min_score": 0.1,
        },
    },
    "fused_default": {
        "image_text_matching_filter_args": {
            "hf_blip": "Salesforce/blip-itm-base-coco",
            "max_score": 1.0,
            "min_score": 0.1,
        },
        "mllm_mapper_args": {
            "hf_model": "llava-hf/llava-v1.6-vicuna-7b-hf",
            "max_new_tokens": 256,
            "num_beams": 1,
            "temperature": 0.2,
            "top_p": None,
        },
        "steps": {
            "ImgDiffCaptionSimilarityFilter": {"max_score": 1.0, "min_score": 0.1},
            "ImgDiffDifferenceCaptioner": {
                "bar_width": 20,
                "box_line_width": 3,
                "box_padding": 5,
                "empty_result": "seed",
                "image_output_dir": None,
                "jpeg_quality": 90,
                "keep_difference_images": False,
                "prompt_template": "Analyse the left image and "
                "the right image (separated "
                "by the black vertical bar). "
                "The detail within the red "
                "bounding box in the left "
                "image is: {caption1}, the "
                "detail within the red "
                "bounding box in the right "
                "image is: {caption2}. What "
                "is their difference? Answer "
                "with a few concise "
                "sentences.",
                "system_prompt": "",
            },
            "ImgDiffImageTextMatchingFilter": {"max_score": 1.0, "min_score": 0.1},
            "ImgDiffRegionCaptioner": {
                "bbox_format": "cxcywh",
                "max_box_area_ratio": 0.1,
                "normalized": False,
                "prompt_template": "Please provide a clear description for this region: {bbox}.",
                "system_prompt": "",
            },
        },
        "text_pair_similarity_filter_args": {
            "hf_clip": "openai/clip-vit-base-patch32",
            "max_score": 1.0,
            "min_score": 0.1,
        },
    },
    "itm_custom": {"max_score": 1.0, "min_score": 0.0},
    "itm_default": {"max_score": 1.0, "min_score": 0.1},
    "meta_writer": {},
    "proposer_custom": {
        "bbox_format": "xyxy",
        "max_boxes": 2,
        "min_area_ratio": 0.01,
        "normalized": True,
        "propose_for_zero_boxes": True,
        "threshold": 20,
    },
    "proposer_default": {
        "bbox_format": "cxcywh",
        "max_boxes": 5,
        "min_area_ratio": 0.0005,
        "normalized": False,
        "propose_for_zero_boxes": False,
        "threshold": 40.0,
    },
    "region_captioner_custom": {
        "bbox_format": "xyxy",
        "max_box_area_ratio": None,
        "normalized": True,
        "prompt_template": "What is in {bbox}?",
        "system_prompt": "Be brief.",
    },
    "region_captioner_default": {
        "bbox_format": "cxcywh",
        "max_box_area_ratio": 0.1,
        "normalized": False,
        "prompt_template": "Please provide a clear description for this region: {bbox}.",
        "system_prompt": "",
    },
    "similarity_custom": {"max_score": 1.0, "min_score": 0.0},
    "similarity_default": {"max_score": 1.0, "min_score": 0.1},
    "verifier_custom": {"min_region_score": 1.0},
    "verifier_default": {"min_region_score": None},
    "vqa_custom": {
        "prompt_template": "Describe the picture.",
        "response_schema": {
            "count_key": "valid_bboxes_num",
            "kind": "region_json",
            "max_boxes": 4,
            "max_caption_chars": None,
            "max_tokens": 512,
        },
        "system_prompt": "",
    },
    "vqa_default": {"system_prompt": "You are a helpful assistant."},
    "vqa_string_template": {"prompt_template": "Describe it.", "system_prompt": "You are a helpful assistant."},
}


def _default_keys(operator: OperatorABC) -> dict[str, Any]:
    if isinstance(operator, PromptedVQAGenerator):  # the keys its run() passes on
        return {
            "input_prompt_key": "prompt",
            "input_image_key": "image",
            "input_conversation_key": None,
            "output_answer_key": "answer",
        }
    assert operator.key_spec is not None
    return dict(operator.key_spec.defaults)


def _what_to_pin(cls: type[OperatorABC]) -> str:
    """The lines to add to CASES and PARAMS for an operator class that has no pinned fingerprint yet."""
    case = f"{cls.__name__.lower()}_default"
    try:
        operator = cls()
    except TypeError as exc:  # needs arguments (a serving: pass StubModel("vlm")), so no value to show
        return (
            f"{cls.__name__} is not pinned: add a case to CASES and PARAMS in tests/operators/test_params.py, "
            f"built with stand-ins for its models (StubModel), e.g. "
            f'CASES["{case}"] = (lambda: {cls.__name__}(...), "<fingerprint>") ({exc})'
        )
    keys = dict(operator.key_spec.defaults) if operator.key_spec else {}
    return (
        f"{cls.__name__} is not pinned: add to tests/operators/test_params.py (and import {cls.__name__} "
        f"from {cls.__module__}):\n"
        f'  in CASES:  "{case}": ({cls.__name__}, "{operator.fingerprint(keys)}"),\n'
        f'  in PARAMS: "{case}": {json.loads(json.dumps(operator.params()))!r},\n'
        "A pinned fingerprint must never change afterwards: it is what makes users' cached steps current."
    )


def test_every_operator_class_is_pinned() -> None:
    built = {type(factory()).__name__ for factory, _ in CASES.values()} | {"RegionCaptionParser"}  # see below
    unpinned = [cls for name, cls in operator_classes().items() if name not in built]
    assert not unpinned, "\n".join(_what_to_pin(cls) for cls in unpinned)
    assert built <= set(operator_classes()), f"pinned but not found by the registry: {built - set(operator_classes())}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_fingerprints_and_params_stay_as_they_were(case: str) -> None:
    factory, pinned = CASES[case]
    operator = factory()
    assert json.loads(json.dumps(operator.params())) == PARAMS[case]
    assert operator.fingerprint(_default_keys(operator)) == pinned


def test_the_parser_records_its_derived_version() -> None:
    parser = RegionCaptionParser()
    assert parser.params() == {"parser_version": PARSER_VERSION}
    expected = fingerprint(
        {
            "operator": "dataflow_mm.operators.region_captions.RegionCaptionParser",  # its name before the move
            "params": {"parser_version": PARSER_VERSION},
            "keys": dict(parser.key_spec.defaults),  # type: ignore[union-attr]
            "provenance": {},
        }
    )
    assert parser.fingerprint(dict(parser.key_spec.defaults)) == expected  # type: ignore[union-attr]


# -- a custom operator gets its params from its constructor, with no code ---------------------------------
class Suffix(OperatorABC):
    """A README-style custom operator with settings: ``suffix`` changes the output, ``workers`` does not."""

    key_spec = KeySpec(
        defaults={"input_key": "text", "output_key": "out"}, reads=("input_key",), writes=("output_key",)
    )
    param_spec = ParamSpec(exclude=("workers",))

    def __init__(self, suffix: str = "!", repeat: float = 1.0, workers: int = 2, serving: Any = None) -> None:
        self.suffix = suffix
        self.repeat = float(repeat)  # normalised: 2 and 2.0 are the same setting
        self.workers = workers
        self.serving = serving

    def process(self, frame: pd.DataFrame, input_key: str = "text", output_key: str = "out", **_: Any) -> pd.DataFrame:
        out = frame.copy()
        out[output_key] = [f"{v}{self.suffix * int(self.repeat)}" for v in out[input_key]]
        return out


class ReadmeSuffix(OperatorABC):
    """The README's example, as written there."""

    key_spec = KeySpec(
        defaults={"input_key": "text", "output_key": "out"}, reads=("input_key",), writes=("output_key",)
    )
    param_spec = ParamSpec(exclude=("workers",))

    def __init__(self, suffix: str = "!", workers: int = 2) -> None:
        self.suffix, self.workers = suffix, workers

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        return frame


def test_the_readme_example_gets_its_params_with_no_code() -> None:
    assert ReadmeSuffix("?").params() == {"suffix": "?"}
    keys = {"input_key": "text", "output_key": "out"}
    assert ReadmeSuffix(workers=8).fingerprint(keys) == ReadmeSuffix().fingerprint(keys)


def test_custom_operator_params_come_from_its_constructor() -> None:
    assert Suffix().params() == {"suffix": "!", "repeat": 1.0, "serving": None}
    assert Suffix("?", 2).params() == Suffix(suffix="?", repeat=2.0, workers=8).params()
    assert Suffix("?", 2).params() == {"suffix": "?", "repeat": 2.0, "serving": None}
    keys = {"input_key": "text", "output_key": "out"}
    assert Suffix("?").fingerprint(keys) != Suffix("!").fingerprint(keys)
    assert Suffix(workers=1).fingerprint(keys) == Suffix(workers=16).fingerprint(keys)


def test_a_serving_is_provenance_not_a_parameter() -> None:
    op = Suffix(serving=StubModel("vlm"))
    assert op.params() == {"suffix": "!", "repeat": 1.0}
    assert op.provenance() == {"serving": {"model": "vlm", "backend": "stub"}}
    keys = {"input_key": "text", "output_key": "out"}
    assert op.fingerprint(keys) != Suffix(serving=StubModel("other")).fingerprint(keys)


def test_objects_without_a_data_form_are_recorded_by_type_name() -> None:
    class Upperer(Suffix):
        def __init__(self, transform: Any = str.upper, template: Any = None) -> None:
            super().__init__()
            self.transform, self.template = transform, template

    op = Upperer(template=Template())
    assert op.params() == {"transform": "str.upper", "template": f"{__name__}.Template"}
    assert op.params() == Upperer(template=Template()).params()  # stable: no memory addresses


def test_param_spec_names_are_checked_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r"Bad.param_spec names no argument of __init__: worker"):

        class Bad(Suffix):
            param_spec = ParamSpec(exclude=("worker",))


def test_a_changed_parameter_reruns_the_step_and_an_excluded_one_does_not(tmp_path: Path) -> None:
    table = write_table(pd.DataFrame({"text": ["a", "b"]}), tmp_path / "in.jsonl")

    def run(op: Suffix) -> bool:
        result = op.run(FileStorage(str(table), cache_path=str(tmp_path / "cache"), file_name_prefix="s").step())
        return result.skipped

    assert not run(Suffix("!", workers=1))
    assert run(Suffix("!", workers=4))  # the worker count does not change the output: resumed
    assert not run(Suffix("?"))  # a new suffix: the step runs again
    assert read_table(tmp_path / "cache" / "s_step1.jsonl").frame["out"].tolist() == ["a?", "b?"]
