"""Data-Juicer's sample format and argument names for Img-Diff: boxes from ``__dj__meta__.__dj__bbox__``,
results written back there, and every Data-Juicer argument either honoured or refused with a clear message."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dataflow_mm.common.errors import UserError
from dataflow_mm.operators.imgdiff.fused_generator import ImgDiffDifferenceCaptionGenerator
from dataflow_mm.operators.interop.data_juicer import (
    DJ_BBOX_PATH,
    DataJuicerArgumentError,
    DataJuicerMetaWriter,
    box_values,
)
from tests.support.fake_serving import FakeVLMServing


def test_box_values_read_columns_dotted_paths_and_the_meta_fallback() -> None:
    meta = [{"__dj__bbox__": [[5, 5, 4, 4]], "tag": 1}, {"tag": 2}]
    dj = pd.DataFrame({"__dj__meta__": meta}, dtype=object)
    assert box_values(dj, DJ_BBOX_PATH) == [[[5, 5, 4, 4]], None]
    assert box_values(dj, "bboxes") == [[[5, 5, 4, 4]], None]  # no flat column: Data-Juicer's meta
    flat = pd.DataFrame({"bboxes": [[[1, 1, 2, 2]], None], "__dj__meta__": meta}, dtype=object)
    assert box_values(flat, "bboxes") == [[[1, 1, 2, 2]], None]  # a flat column wins
    assert box_values(pd.DataFrame({"x": [1]}), "bboxes") == [None]


def test_a_meta_column_written_as_json_text_is_read_through_a_dotted_key() -> None:
    """A Data-Juicer meta that reached the table as text (a CSV, a string-typed Parquet column)."""
    text = [json.dumps({"__dj__bbox__": [[5, 5, 4, 4]], "tag": 1}), "", json.dumps({"tag": 2}), "not json {"]
    dj = pd.DataFrame({"__dj__meta__": text}, dtype=object)
    assert box_values(dj, DJ_BBOX_PATH) == [[[5, 5, 4, 4]], None, None, None]
    assert box_values(dj, "bboxes") == [[[5, 5, 4, 4]], None, None, None]
    nested = pd.DataFrame({"labels": ['{"regions": {"boxes": [[1, 2, 3, 4]]}}']}, dtype=object)
    assert box_values(nested, "labels.regions.boxes") == [[[1, 2, 3, 4]]]


def test_meta_writer_writes_data_juicers_result_keys_and_keeps_the_others() -> None:
    frame = pd.DataFrame(
        {
            "__dj__meta__": [{"tag": "a", "__dj__bbox__": [[9, 9, 2, 2]]}, None],
            "bboxes": [[[10, 10, 4, 4]], [[0, 0, 0, 0]]],
            "region_caption1": [["a cat"], [""]],
            "region_caption2": [["a dog"], [""]],
            "bbox_difference_captions": [["cat became dog"], [""]],
            "bbox_decisions": [[{"kept": True}], [{"kept": False}]],
        },
        dtype=object,
    )
    out = DataJuicerMetaWriter().process(frame)
    first, second = out["__dj__meta__"]
    assert first == {
        "tag": "a",
        "__dj__bbox__": [[10, 10, 4, 4]],
        "region_caption1": ["a cat"],
        "region_caption2": ["a dog"],
        "bbox_difference_captions": ["cat became dog"],
    }
    assert second == {"__dj__bbox__": [], "region_caption1": [], "region_caption2": [], "bbox_difference_captions": []}
    assert out["bboxes"].tolist() == frame["bboxes"].tolist()  # flat columns stay


@pytest.mark.parametrize(
    ("where", "options", "message"),
    [
        ("text", {"text_pair_similarity_filter_args": {"text_key_second": "caption_b"}}, "text_key_second='caption_b'"),
        ("top", {"image_key": "pictures"}, "image_key='pictures' cannot be honoured .*input_image1_key"),
        ("top", {"num_proc": 4}, "num_proc=4 .*--runner ray"),
        ("itm", {"image_text_matching_filter_args": {"horizontal_flip": True}}, "horizontal_flip=True"),
        ("llm", {"mllm_mapper_args": {"num_beams": 4}}, "num_beams=4 .*temperature 0"),
        ("llm", {"mllm_mapper_args": {"hf_model": "llava-hf/x"}}, "hf_model='llava-hf/x' and a serving"),
        ("top", {"accelerator": "tpu"}, "accelerator='tpu'"),
        ("top", {"video_key": "clips"}, "video is not supported"),
        ("top", {"not_a_dj_arg": 1}, r"unknown argument\(s\) \['not_a_dj_arg'\]"),
    ],
)
def test_data_juicer_arguments_that_cannot_be_honoured_are_refused(where: str, options: dict, message: str) -> None:
    with pytest.raises(DataJuicerArgumentError, match=message) as error:
        ImgDiffDifferenceCaptionGenerator(serving=FakeVLMServing(), **options)
    assert isinstance(error.value, UserError)  # scripts print one line and exit 2


def test_data_juicer_arguments_that_ask_for_what_happens_are_honoured() -> None:
    op = ImgDiffDifferenceCaptionGenerator(
        mllm_mapper_args={"num_beams": 1, "trust_remote_code": False},
        image_text_matching_filter_args={"any_or_all": "all", "reduce_mode": "max", "num_proc": 1},
        text_pair_similarity_filter_args={"text_key_second": "target_text", "accelerator": "gpu"},
        serving=FakeVLMServing(),
        image_key="images",
        text_key="text",
        skip_op_error=True,
        accelerator="cuda",
    )
    assert op.itm_scorer.device == op.text_similarity.device == "cuda"  # accelerator chooses the scoring device
    with pytest.raises(DataJuicerArgumentError, match="contradicts"):
        ImgDiffDifferenceCaptionGenerator(
            serving=FakeVLMServing(), text_pair_similarity_filter_args={"accelerator": "cpu"}, device="cuda"
        )
    op = ImgDiffDifferenceCaptionGenerator(
        serving=FakeVLMServing(), text_pair_similarity_filter_args={"accelerator": "cpu"}
    )
    assert op.text_similarity.device == "cpu" and op.itm_scorer.device == "auto"
    assert json.dumps(op.params())  # Data-Juicer's no-effect keys stay out of the fingerprint
    assert "text_key_second" not in op.params()["text_pair_similarity_filter_args"]
