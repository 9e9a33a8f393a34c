"""RegionCaptionParser: real-world answer shapes, given as fixed strings through a fake serving,
split into one caption per region; the parse rate in the step's metrics and the run summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator, RegionCaptionParser
from dataflow_mm.operators.region_caption.caption_parser import STRUCTURED_ANSWER_INSTRUCTION, parse_region_captions
from dataflow_mm.operators.region_caption.image_bbox_generator import DEFAULT_REGION_PROMPT
from dataflow_mm.serving.base import Completion
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_jsonl, write_region_caption_table

SEED_ANSWER = (
    "In <region1>, the focus is on the lower half of a person wearing high-heeled shoes with an ornate design. "
    "The setting appears to be a kitchen, with items such as a table with floral tablecloth, a broom, and various "
    "kitchen utensils visible in the background. The overall scene captures a domestic and casual atmosphere."
)

# (answer as a model wrote it, number of regions, expected region_captions)
CASES: list[tuple[str, int, list[str]]] = [
    (SEED_ANSWER, 1, ["T" + SEED_ANSWER.removeprefix("In <region1>, t")]),
    (
        "<region1>: A red car parked on the street.\n<region2>: A man in a blue jacket.",
        2,
        ["A red car parked on the street.", "A man in a blue jacket."],
    ),
    ("Region 1: A dog.\nRegion 2: A cat.\nRegion 3: A bird.", 3, ["A dog.", "A cat.", "A bird."]),
    ("Region 1: A dog. Region 2: A cat.", 2, ["A dog.", "A cat."]),
    (
        "Here are the descriptions of the marked regions:\n\n- **Region 1**: A wooden table.\n"
        "- **Region 2**: A white mug on the table.\n\nOverall, the image depicts a cozy kitchen.",
        2,
        ["A wooden table.", "A white mug on the table."],
    ),
    ("1. A wooden table with a cloth.\n2. A white mug.", 2, ["A wooden table with a cloth.", "A white mug."]),
    ("1. <region1>: a tree\n2. <region2>: a house", 2, ["A tree", "A house"]),
    (
        "In <region1>, a man is riding a bicycle. In <region2>, a woman walks her dog. "
        "<region3> shows a red traffic light.",
        3,
        ["A man is riding a bicycle.", "A woman walks her dog.", "<region3> shows a red traffic light."],
    ),
    (
        "In <region1> and <region2>, there are two identical chairs. <region3>: a lamp.",
        3,
        ["There are two identical chairs.", "There are two identical chairs.", "A lamp."],
    ),
    ("<region1>: a man.\n<region3>: a dog.", 3, ["A man.", "", "A dog."]),
    ("<region1>: a man.\n<region2>: a woman.\n<region4>: a box that is not there.", 2, ["A man.", "A woman."]),
    ("<region1>: a man.\n<region2>: a woman.\n<region1>: he wears a hat.", 2, ["A man. He wears a hat.", "A woman."]),
    (
        "**Region 1**\n\nA brown horse grazing.\n\n**Region 2**\n\nA wooden fence.",
        2,
        ["A brown horse grazing.", "A wooden fence."],
    ),
    ("Region 1:\n- A man\n- wearing a hat\n\nRegion 2:\n- A dog", 2, ["A man wearing a hat", "A dog"]),
    ("There are 2 regions: <region1> to <region2>.\n<region1>: sky\n<region2>: grass", 2, ["Sky", "Grass"]),
    (
        "The dog in <region2> is sleeping. It looks calm. The cat near <region1> is awake.",
        2,
        ["The cat near <region1> is awake.", "The dog in <region2> is sleeping. It looks calm."],
    ),
    ("A woman holding an umbrella.", 1, ["A woman holding an umbrella."]),
    ("A busy street scene.", 2, ["", ""]),
    ("<region1>: a cat, <region2>: a dog", 2, ["A cat", "A dog"]),
    ("<Region 1>: a kite\n[region2] - a beach", 2, ["A kite", "A beach"]),
    (
        "The first region shows a kite. In the second region, children play.",
        2,
        ["The first region shows a kite.", "Children play."],
    ),
    ("Regions 1-3: pine trees.", 3, ["Pine trees.", "Pine trees.", "Pine trees."]),
    ("<region1>：一只猫", 1, ["一只猫"]),
    ("", 2, ["", ""]),
]


@pytest.mark.parametrize(("answer", "n_regions", "expected"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_parse_region_captions(answer: str, n_regions: int, expected: list[str]) -> None:
    assert parse_region_captions(answer, n_regions) == expected


def test_counts_that_are_not_a_positive_number_give_an_empty_list() -> None:
    assert parse_region_captions("<region1>: a cat", None) == []
    assert parse_region_captions("<region1>: a cat", float("nan")) == []
    assert parse_region_captions("<region1>: a cat", 0) == []
    assert parse_region_captions(None, 2.0) == ["", ""]  # a count read back as a float is fine


class FixedAnswerServing(FakeVLMServing):
    """Answers each request with the fixed string its prompt names (``case <i>``); ``fail`` fails."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(load_images=False)
        self.answers = answers

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        self.calls.append(list(conversations))
        prompts = [conversation[-1]["content"][-1]["text"] for conversation in conversations]
        return [
            Completion(text=None, error="ServingError: fake failure")
            if prompt == "fail"
            else Completion(text=self.answers[prompt], prompt_tokens=1, completion_tokens=1)
            for prompt in prompts
        ]


class ParsePipeline(PipelineABC):
    def __init__(self, table: Path, cache: Path, serving: FakeVLMServing) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=5)
        self.serving = serving
        self.vqa = PromptedVQAGenerator(serving)
        self.parser = RegionCaptionParser()

    def forward(self) -> None:
        self.vqa.run(self.storage.step(), input_prompt_key="prompt", input_image_key=None)
        self.parser.run(self.storage.step())


def test_table_of_answers_through_a_fake_serving_and_the_parse_rate(tmp_path: Path) -> None:
    rows = [{"prompt": f"case {i}", "valid_bboxes_num": n} for i, (_, n, _) in enumerate(CASES)]
    rows.append({"prompt": "fail", "valid_bboxes_num": 2})
    rows.append({"prompt": "case 0", "valid_bboxes_num": 1, "error": "ImageNotFoundError: gone.jpg"})
    table = write_jsonl(tmp_path / "answers.jsonl", rows)
    serving = FixedAnswerServing({f"case {i}": answer for i, (answer, _, _) in enumerate(CASES)})
    summary = ParsePipeline(table, tmp_path / "cache", serving).run()

    out = [json.loads(line) for line in (tmp_path / "cache" / "rc_step2.jsonl").read_text().splitlines()]
    assert len(out) == len(rows) and summary.rows_out == len(rows)
    assert [r["region_captions"] for r in out[: len(CASES)]] == [expected for _, _, expected in CASES]
    assert out[-2]["error"].startswith("ServingError") and out[-2]["region_captions"] is None
    assert out[-1]["error"].startswith("ImageNotFoundError") and out[-1].get("region_captions") is None

    total = sum(n for _, n, _ in CASES)
    parsed = sum(1 for _, _, expected in CASES for caption in expected if caption)
    step = summary.steps[-1]
    assert step.metrics == {"region_captions_parsed": parsed, "region_captions_parsed_total": total}
    assert summary.metrics["region_captions_parsed_rate"] == round(parsed / total, 4)
    assert f"region_captions_parsed {parsed}/{total} ({100 * parsed / total:.1f}%)" in summary.text()
    saved = json.loads((tmp_path / "cache" / "rc_summary.json").read_text())
    assert saved["metrics"]["region_captions_parsed"] == parsed
    assert saved["steps"][-1]["rates"] == {"region_captions_parsed_rate": round(parsed / total, 4)}

    # a rerun skips both steps and still reports the parse rate (kept in the manifest)
    again = ParsePipeline(table, tmp_path / "cache", FixedAnswerServing({})).run()
    assert [s.skipped for s in again.steps] == [True, True]
    assert again.metrics == summary.metrics


def region_pipeline(**kwargs):  # type: ignore[no-untyped-def]
    from dataflow_mm.pipeline.templates import load_pipeline_script

    module = load_pipeline_script("image_region_caption_pipeline", "region_caption_script_for_parser_tests")
    return module.ImageRegionCaptionPipeline(**kwargs)


@pytest.mark.parametrize("structured", [False, True])
def test_the_script_keeps_the_seed_prompt_unless_structured_answers_are_asked_for(
    tmp_path: Path, structured: bool
) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3, n_boxes=2)
    serving = FakeVLMServing()
    pipeline = region_pipeline(
        serving=serving,
        first_entry_file=str(table),
        cache_path=str(tmp_path / "cache"),
        output_image_with_bbox_path=None,
        structured_answer=structured,
    )
    summary = pipeline.run()
    rows = [json.loads(line) for line in (tmp_path / "cache" / "region_caption_step3.jsonl").read_text().splitlines()]
    seed_prompt = (
        "Describe the content of each marked region in the image. There are 2 regions: <region1> to <region2>."
    )
    assert DEFAULT_REGION_PROMPT.format(n=2) == seed_prompt
    expected = seed_prompt + (STRUCTURED_ANSWER_INSTRUCTION.format(n=2) if structured else "")
    assert [r["prompt"] for r in rows] == [expected] * 3
    assert all(r["region_captions"] == ["", ""] for r in rows)  # the fake's answers name no region
    assert summary.steps[-1].metrics == {"region_captions_parsed": 0, "region_captions_parsed_total": 6}


class TruncatingServing(FixedAnswerServing):
    """Like FixedAnswerServing; answers to prompts starting with ``cut`` stopped at max_tokens."""

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        completions = super()._chat_batch(conversations, sampling)
        for conversation, completion in zip(conversations, completions, strict=True):
            if conversation[-1]["content"][-1]["text"].startswith("cut"):
                completion.finish_reason = "length"
        return completions


def test_truncated_answers_are_marked_per_row_and_kept_out_of_the_parse_rate(tmp_path: Path) -> None:
    answers = {"whole": "<region1>: a red car. <region2>: a tree.", "cut 1": "<region1>: a dog that", "cut 2": "The"}
    rows = [{"prompt": prompt, "valid_bboxes_num": 2} for prompt in answers]
    serving = TruncatingServing(answers)
    summary = ParsePipeline(write_jsonl(tmp_path / "t.jsonl", rows), tmp_path / "cache", serving).run()

    out = [json.loads(line) for line in (tmp_path / "cache" / "rc_step2.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in out] == [False, True, True]
    assert summary.steps[-1].metrics == {
        "region_captions_parsed": 2,
        "region_captions_parsed_total": 2,
        "region_captions_truncated_parsed": 1,
        "region_captions_truncated_parsed_total": 4,
    }
    assert summary.metrics["region_captions_parsed_rate"] == 1.0
    assert serving.stats.truncated == 2
    assert "2 truncated at max_tokens" in summary.text()
    assert "region_captions_truncated_parsed 1/4" in summary.text()
