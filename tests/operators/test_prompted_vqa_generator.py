"""PromptedVQAGenerator: one batched serving call per chunk, answers in order, failures as row errors."""

from __future__ import annotations

import json
from pathlib import Path

from dataflow_mm import FileStorage, PromptedVQAGenerator
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_jsonl, write_region_caption_table


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def vqa_table(tmp_path: Path, n: int) -> Path:
    images = rows_of(write_region_caption_table(tmp_path / "imgs", n_rows=n))
    return write_jsonl(
        tmp_path / "q.jsonl", [{"image": r["image"], "prompt": f"question {i}"} for i, r in enumerate(images)]
    )


def test_one_batched_call_per_chunk_and_answers_in_order(tmp_path: Path) -> None:
    serving = FakeVLMServing()
    storage = FileStorage(str(vqa_table(tmp_path, 5)), cache_path=str(tmp_path / "cache"), chunk_size=2)
    PromptedVQAGenerator(serving).run(storage.step(), input_prompt_key="prompt", input_image_key="image")
    assert [len(call) for call in serving.calls] == [2, 2, 1]
    rows = rows_of(tmp_path / "cache" / "dataflow_cache_step_step1.jsonl")
    assert [r["answer"].endswith(f"question {i} [(320, 240)]") for i, r in enumerate(rows)] == [True] * 5
    assert all(r["error"] is None for r in rows)


def test_failed_requests_become_row_errors_not_answers(tmp_path: Path) -> None:
    serving = FakeVLMServing(fail_when=lambda prompt: prompt.endswith("question 1"))
    storage = FileStorage(str(vqa_table(tmp_path, 3)), cache_path=str(tmp_path / "cache"))
    PromptedVQAGenerator(serving).run(storage.step())
    rows = rows_of(tmp_path / "cache" / "dataflow_cache_step_step1.jsonl")
    assert [r["answer"] is None for r in rows] == [False, True, False]
    assert rows[1]["error"].startswith("ServingError:")


def test_rows_with_an_earlier_error_are_not_sent(tmp_path: Path) -> None:
    table = vqa_table(tmp_path, 3)
    rows = rows_of(table)
    rows[0]["error"] = "ImageNotFoundError: gone.jpg"
    write_jsonl(table, rows)
    serving = FakeVLMServing()
    PromptedVQAGenerator(serving).run(FileStorage(str(table), cache_path=str(tmp_path / "cache")).step())
    out = rows_of(tmp_path / "cache" / "dataflow_cache_step_step1.jsonl")
    assert [len(call) for call in serving.calls] == [2]
    assert out[0]["error"] == "ImageNotFoundError: gone.jpg" and out[0]["answer"] is None
    assert out[1]["answer"] and out[2]["answer"]


def test_missing_image_and_empty_prompt_are_row_errors(tmp_path: Path) -> None:
    table = vqa_table(tmp_path, 1)
    good = rows_of(table)[0]
    write_jsonl(
        table,
        [good, {"image": str(tmp_path / "nope.jpg"), "prompt": "q"}, {"image": good["image"], "prompt": ""}],
    )
    PromptedVQAGenerator(FakeVLMServing()).run(FileStorage(str(table), cache_path=str(tmp_path / "c")).step())
    out = rows_of(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert out[0]["error"] is None
    assert out[1]["error"].startswith("ImageNotFoundError:")
    assert out[2]["error"].startswith("MissingFieldError:")


def test_sharegpt_conversations_carry_the_image_on_the_first_user_turn(tmp_path: Path) -> None:
    image = rows_of(write_region_caption_table(tmp_path / "imgs", n_rows=1))[0]["image"]
    table = write_jsonl(
        tmp_path / "c.jsonl",
        [{"image": image, "conversation": [{"from": "human", "value": "<image>\nWhat is in the picture?"}]}],
    )
    serving = FakeVLMServing()
    PromptedVQAGenerator(serving, system_prompt="Be brief.").run(
        FileStorage(str(table), cache_path=str(tmp_path / "cache")).step(),
        input_conversation_key="conversation",
    )
    (conversation,) = serving.calls[0]
    assert conversation[0] == {"role": "system", "content": "Be brief."}
    assert [part["type"] for part in conversation[1]["content"]] == ["image", "text"]
    assert conversation[1]["content"][1]["text"] == "What is in the picture?"


def test_every_image_of_a_list_cell_goes_into_the_request(tmp_path: Path) -> None:
    """DataFlow-MM's sample format (``"image": ["./a.jpg", ...]``) and a Hugging Face bytes struct."""
    from dataflow_mm.serving.messages import split_images
    from tests.support.user_inputs import write_hf_image_shard

    paths = [r["image"] for r in rows_of(write_region_caption_table(tmp_path / "imgs", n_rows=2))]
    table = write_jsonl(
        tmp_path / "q.jsonl", [{"image": paths, "prompt": "compare"}, {"image": [paths[0]], "prompt": "one"}]
    )
    serving = FakeVLMServing()
    PromptedVQAGenerator(serving).run(FileStorage(str(table), cache_path=str(tmp_path / "c1")).step())
    assert [len(split_images(c)[1]) for c in serving.calls[0]] == [2, 1]
    assert [str(image) for image in split_images(serving.calls[0][0])[1]] == paths

    shard = write_hf_image_shard(
        tmp_path / "q.parquet",
        {"image": [{"bytes": Path(paths[1]).read_bytes(), "path": None}], "prompt": ["what is this?"]},
        ["image"],
    )
    serving = FakeVLMServing()
    PromptedVQAGenerator(serving).run(FileStorage(str(shard), cache_path=str(tmp_path / "c2")).step())
    ((image,),) = [split_images(c)[1] for c in serving.calls[0]]
    assert Path(image).parent == tmp_path / "c2" / "media" and Path(image).read_bytes() == Path(paths[1]).read_bytes()


def test_every_row_failing_still_writes_the_answer_column(tmp_path: Path) -> None:
    table = vqa_table(tmp_path, 2)
    rows = rows_of(table)
    write_jsonl(table, [{**r, "image": str(tmp_path / f"gone{i}.jpg")} for i, r in enumerate(rows)])
    PromptedVQAGenerator(FakeVLMServing()).run(FileStorage(str(table), cache_path=str(tmp_path / "c")).step())
    out = rows_of(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert all(r["error"].startswith("ImageNotFoundError:") and "answer" in r and r["answer"] is None for r in out)
    assert [r["image"] for r in out] == [str(tmp_path / f"gone{i}.jpg") for i in range(2)]


def test_a_list_of_image_paths_sends_every_image(tmp_path: Path) -> None:
    """DataFlow-MM's sample format: ``"image": ["./a.jpg"]`` (a list, possibly of several images)."""
    images = [r["image"] for r in rows_of(write_region_caption_table(tmp_path / "imgs", n_rows=2))]
    table = write_jsonl(
        tmp_path / "q.jsonl",
        [{"image": images[:1], "prompt": "one"}, {"image": images, "prompt": "two"}],
    )
    serving = FakeVLMServing()
    PromptedVQAGenerator(serving).run(FileStorage(str(table), cache_path=str(tmp_path / "c")).step())
    out = rows_of(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert all(r["error"] is None and r["answer"] for r in out)
    assert [sum(p["type"] == "image" for p in c[-1]["content"]) for c in serving.calls[0]] == [1, 2]


def test_a_table_without_images_is_asked_text_only(tmp_path: Path) -> None:
    table = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "What is 2 + 2?"}, {"prompt": "Name a colour."}])
    serving = FakeVLMServing()
    PromptedVQAGenerator(serving).run(FileStorage(str(table), cache_path=str(tmp_path / "c")).step())
    out = rows_of(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert all(r["error"] is None and r["answer"] for r in out)
    assert all(p["type"] == "text" for c in serving.calls[0] for p in c[-1]["content"])


def test_video_and_audio_keys_are_one_clear_error_not_a_type_error(tmp_path: Path) -> None:
    import pytest

    from dataflow_mm.common.errors import UnsupportedArgumentError

    table = vqa_table(tmp_path, 1)
    op = PromptedVQAGenerator(FakeVLMServing())
    for name in ("input_video_key", "input_audio_key"):
        with pytest.raises(UnsupportedArgumentError, match=name):
            op.run(FileStorage(str(table), cache_path=str(tmp_path / "c")).step(), **{name: "video"})
    op.run(FileStorage(str(table), cache_path=str(tmp_path / "c")).step(), input_video_key=None)  # the default
    assert rows_of(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")[0]["answer"]


def test_dataflow_mm_prompt_template_fills_the_first_user_turn(tmp_path: Path) -> None:
    class CaptionPrompt:  # DataFlow-MM's prompt classes: build_prompt() returns the text
        def build_prompt(self) -> str:
            return "Describe the image in one sentence."

    image = rows_of(write_region_caption_table(tmp_path / "imgs", n_rows=1))[0]["image"]
    table = write_jsonl(tmp_path / "c.jsonl", [{"image": [image], "conversation": [{"from": "human", "value": ""}]}])
    serving = FakeVLMServing()
    PromptedVQAGenerator(serving, prompt_template=CaptionPrompt()).run(
        FileStorage(str(table), cache_path=str(tmp_path / "c")).step(),
        input_conversation_key="conversation",
        input_image_key="image",
        output_answer_key="caption",
    )
    (conversation,) = serving.calls[0]
    assert conversation[-1]["content"][-1]["text"] == "Describe the image in one sentence."
    assert rows_of(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")[0]["caption"]


def test_text_only_on_the_hf_backend_with_a_tiny_model(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    from dataflow_mm import LocalModelVLMServing_hf

    table = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Say hi."}, {"prompt": "Count to three."}])
    serving = LocalModelVLMServing_hf(str(tiny_qwen_dir), max_tokens=4, temperature=0.0)
    PromptedVQAGenerator(serving).run(FileStorage(str(table), cache_path=str(tmp_path / "c")).step())
    out = rows_of(tmp_path / "c" / "dataflow_cache_step_step1.jsonl")
    assert all(r["error"] is None and isinstance(r["answer"], str) for r in out)
    serving.cleanup()
