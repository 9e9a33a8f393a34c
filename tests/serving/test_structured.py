"""Structured answers (`--structured_answer json`): the answer is constrained to exactly
{"region1": ..., "regionN": ...} on the transformers backend (xgrammar) and through the
OpenAI-compatible API (response_format), with a size bound that always fits max_tokens.
The vLLM side is in tests/serving/test_vllm_serving.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dataflow_mm import APIVLMServing_openai, LocalModelVLMServing_hf
from dataflow_mm.common.errors import UserError
from dataflow_mm.operators.region_caption.caption_parser import (
    RegionAnswerSchema,
    parse_region_captions,
    region_answer_schema,
    structured_answer_overhead,
)
from dataflow_mm.pipeline.templates import load_pipeline_script
from tests.support.openai_test_server import OpenAITestServer
from tests.support.sample_data import write_jsonl, write_region_caption_table

MAX_TOKENS = 120


def region_table(folder: Path) -> Path:
    """Rows with 1, 2 and 3 boxes (and one without: boxes are proposed, so N comes from the image)."""
    table = write_region_caption_table(folder, n_rows=4, size=(160, 120), n_boxes=3, without_boxes=1)
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    rows[0]["bbox"] = rows[0]["bbox"][:1]
    rows[1]["bbox"] = rows[1]["bbox"][:2]
    return write_jsonl(table, rows)


def run_pipeline(serving, tmp_path: Path, **kwargs) -> tuple[list[dict], object]:
    pipeline = load_pipeline_script("image_region_caption_pipeline").ImageRegionCaptionPipeline(
        serving,
        first_entry_file=str(region_table(tmp_path / "imgs")),
        cache_path=str(tmp_path / "cache"),
        output_image_with_bbox_path=None,
        max_boxes=3,
        structured_answer="json",
        **kwargs,
    )
    summary = pipeline.run()
    rows = [json.loads(line) for line in (tmp_path / "cache" / "region_caption_step3.jsonl").read_text().splitlines()]
    return rows, summary


def assert_exact_objects(rows: list[dict]) -> None:
    """Every answer is exactly {"region1".."regionN"} with captions within the row's schema."""
    schema = RegionAnswerSchema(MAX_TOKENS, 3)
    for row in rows:
        assert row["error"] is None, row["error"]
        n = row["valid_bboxes_num"]
        answer = json.loads(row["answer"])
        assert list(answer) == [f"region{k}" for k in range(1, n + 1)]
        pattern = region_answer_schema(n, schema.chars_for(n))["properties"]["region1"]["pattern"]
        assert all(re.fullmatch(pattern, caption) for caption in answer.values()), answer
        assert len(row["region_captions"]) == n and all(row["region_captions"])


def test_schema_size_fits_max_tokens_for_every_region_count() -> None:
    schema = RegionAnswerSchema(max_tokens=512, max_boxes=10)
    for n in range(1, 11):
        assert structured_answer_overhead(n) + n * schema.chars_for(n) <= 512
    assert schema.chars_for(1) == 128 and schema.chars_for(10) == 33
    with pytest.raises(UserError, match=r"max_tokens >= 334 \(got 100\)"):
        RegionAnswerSchema(max_tokens=100, max_boxes=10)
    with pytest.raises(UserError, match="max_tokens >= 1374"):
        RegionAnswerSchema(max_tokens=512, max_boxes=10, max_caption_chars=120)
    with pytest.raises(UserError, match=r"within 1\.\.128"):
        RegionAnswerSchema(max_tokens=4096, max_boxes=1, max_caption_chars=200)


def test_json_answers_are_read_by_key_and_free_text_still_parses() -> None:
    assert parse_region_captions('{"region2": "a dog", "region1": "grass", "region9": "x"}', 2) == ["Grass", "A dog"]
    assert parse_region_captions("<region1>: grass\n<region2>: a dog", 2) == ["Grass", "A dog"]


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_transformers_parse_rate_is_100_percent_on_a_tiny_random_model(
    tmp_path: Path, tiny_qwen_dir: Path, temperature: float
) -> None:
    """A random-weight model (it would ramble) still answers with the exact object, greedy or sampled."""
    serving = LocalModelVLMServing_hf(
        str(tiny_qwen_dir), device="cpu", dtype="float32", temperature=temperature, max_tokens=MAX_TOKENS, seed=3
    )
    calls: list[int] = []
    original = serving._generate
    serving._generate = lambda chunk, sampling: calls.append(len(chunk)) or original(chunk, sampling)  # type: ignore[method-assign]
    rows, summary = run_pipeline(serving, tmp_path)
    assert_exact_objects(rows)
    assert summary.metrics["region_captions_parsed_rate"] == 1.0
    assert len(calls) == len({row["valid_bboxes_num"] for row in rows})  # one batched generate per region count
    serving.cleanup()


def test_api_sends_the_schema_and_the_fake_server_honours_it(tmp_path: Path) -> None:
    with OpenAITestServer() as server:
        serving = APIVLMServing_openai(api_url=server.base_url, model_name="test-model", max_tokens=MAX_TOKENS)
        rows, summary = run_pipeline(serving, tmp_path)
    assert_exact_objects(rows)
    assert summary.metrics["region_captions_parsed_rate"] == 1.0
    formats = [r.body["response_format"] for r in server.requests]
    assert len(formats) == 4 and all(f["type"] == "json_schema" for f in formats)
    assert {len(f["json_schema"]["schema"]["required"]) for f in formats} == {row["valid_bboxes_num"] for row in rows}


def test_a_server_without_structured_outputs_stops_the_run_with_a_clear_error(tmp_path: Path) -> None:
    from dataflow_mm.common.errors import ServingConfigError

    with OpenAITestServer(structured_outputs=False) as server:
        serving = APIVLMServing_openai(api_url=server.base_url, model_name="test-model", max_tokens=MAX_TOKENS)
        with pytest.raises(ServingConfigError) as stopped:  # the first requests all refused the same way
            run_pipeline(serving, tmp_path)
    message = str(stopped.value)
    assert "the server rejected the structured answer" in message
    assert "HTTP 400" in message and "--structured_answer json" in message
    assert 3 <= len(server.requests) <= 4  # not retried; stopped once 3 were refused alike (CONFIG_REPEATS)


def test_the_script_refuses_a_max_tokens_too_small_before_any_model_loads(tmp_path: Path, capsys) -> None:
    script = load_pipeline_script("image_region_caption_pipeline")
    argv = ["--backend", "api", "--api_url", "http://127.0.0.1:9/v1", "--structured_answer", "json"]
    argv += ["--max_tokens", "64", "--cache_path", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as exited:
        script.run_main(lambda: script.main(argv))
    assert exited.value.code == 2
    assert "max_tokens >= 334 (got 64)" in capsys.readouterr().err
    assert script.parse_args(["--structured_answer"]).structured_answer == "lines"


@pytest.mark.slow
def test_a_schema_xgrammar_cannot_compile_is_an_error_for_each_row_not_a_crash(tiny_qwen_dir: Path, tmp_path) -> None:
    from PIL import Image

    from dataflow_mm.serving.base import SamplingParams
    from dataflow_mm.serving.messages import build_conversation

    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "a.png")
    serving = LocalModelVLMServing_hf(str(tiny_qwen_dir), device="cpu", dtype="float32", max_tokens=8)
    too_long = region_answer_schema(1, 300)  # xgrammar 0.2.8 cannot compile {0,299} inside a JSON schema
    answers = serving.chat(
        [build_conversation("hi", [tmp_path / "a.png"])] * 2, SamplingParams(max_tokens=8, response_schema=too_long)
    )
    assert [a.text for a in answers] == [None, None]
    assert all(a.error.startswith("ServingError: xgrammar could not compile the answer schema") for a in answers)
    serving.cleanup()
