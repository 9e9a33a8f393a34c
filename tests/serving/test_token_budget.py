"""Token budget: prompts (images included) are counted with the model's processor before any model call;
requests that cannot fit are downscaled when allowed, or answered with a PromptTooLongError and never sent.

The tiny Qwen2.5-VL here keeps its weights but allows up to 256 image tokens per image
(``longest_edge`` 200704 pixels) instead of 16, so image size decides whether a request fits.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dataflow_mm import FileStorage, PromptedVQAGenerator
from dataflow_mm.models.processor_loading import load_processor
from dataflow_mm.pipeline.summary import RunSummary
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.serving.messages import build_conversation, split_images
from dataflow_mm.serving.token_budget import PromptTokenCounter, fit_to_budget
from tests.support.sample_data import write_jsonl

pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 128
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def roomy_qwen_dir(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2.5-VL with up to 256 tokens per image (the processor's own max pixels raised)."""
    folder = tmp_path_factory.mktemp("roomy") / "qwen"
    shutil.copytree(tiny_qwen_dir, folder)
    config_path = folder / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["size"] = {"longest_edge": 448 * 448, "shortest_edge": 56 * 56}
    config_path.write_text(json.dumps(config))
    return folder


class Spy:
    """Records what reaches ``_chat_batch`` and ``model.generate``."""

    def __init__(self, serving: LocalModelVLMServing_hf) -> None:
        self.batches: list[list[Any]] = []
        self.generated: list[int] = []
        chat_batch = serving._chat_batch

        def spy_chat_batch(conversations, sampling):  # type: ignore[no-untyped-def]
            self.batches.append(list(conversations))
            return chat_batch(conversations, sampling)

        serving._chat_batch = spy_chat_batch  # type: ignore[method-assign]
        serving.load()
        generate = serving.model.generate

        def spy_generate(**kwargs):  # type: ignore[no-untyped-def]
            self.generated.append(int(kwargs["input_ids"].shape[1]))
            return generate(**kwargs)

        serving.model.generate = spy_generate

    def sent_sizes(self) -> list[tuple[int, int]]:
        sizes = []
        for batch in self.batches:
            for conversation in batch:
                (image,) = split_images(conversation)[1]
                sizes.append(image.size)
        return sizes


def make_serving(folder: Path, **kwargs: Any) -> Iterator[LocalModelVLMServing_hf]:
    serving = LocalModelVLMServing_hf(
        str(folder), device="cpu", temperature=0.0, max_tokens=MAX_TOKENS, max_model_len=MAX_MODEL_LEN, **kwargs
    )
    yield serving
    serving.cleanup()


@pytest.fixture
def strict(roomy_qwen_dir: Path) -> Iterator[LocalModelVLMServing_hf]:
    yield from make_serving(roomy_qwen_dir)


@pytest.fixture
def downscaling(roomy_qwen_dir: Path) -> Iterator[LocalModelVLMServing_hf]:
    yield from make_serving(roomy_qwen_dir, allow_downscale=True)


def requests() -> list[list[dict[str, Any]]]:
    return [
        build_conversation("Describe the marked region.", [Image.new("RGB", (56, 56), (200, 30, 30))]),
        build_conversation("Describe the marked region.", [Image.new("RGB", (448, 448), (30, 30, 200))]),
    ]


def test_an_oversized_image_is_caught_before_the_call_and_a_fitting_one_goes_through(
    strict: LocalModelVLMServing_hf,
) -> None:
    spy = Spy(strict)
    small, large = strict.chat(requests())
    assert small.ok and small.prompt_tokens + MAX_TOKENS <= MAX_MODEL_LEN
    assert large.text is None and large.error.startswith("PromptTooLongError: prompt of ")
    assert (
        f"+ {MAX_TOKENS} new tokens > max model length {MAX_MODEL_LEN}" in large.error
        and "allow_downscale=True" in large.error
    )
    tokens = int(large.error.split("prompt of ")[1].split()[0])
    assert tokens > 256  # the 448x448 image alone is 256 tokens
    assert spy.sent_sizes() == [(56, 56)]  # the serving never received the oversized request
    assert len(spy.generated) == 1
    assert strict.stats.requests == 2 and strict.stats.failed == 1
    assert strict.stats.extra["budget_too_long"] == 1
    assert "; 1 too long" in RunSummary([], [strict]).text()


def test_every_request_too_long_means_no_model_call_at_all(strict: LocalModelVLMServing_hf) -> None:
    spy = Spy(strict)
    completions = strict.chat([requests()[1]] * 3)
    assert [c.error.split(":")[0] for c in completions] == ["PromptTooLongError"] * 3
    assert spy.batches == [] and spy.generated == []


def test_downscaling_makes_the_oversized_image_fit(downscaling: LocalModelVLMServing_hf) -> None:
    spy = Spy(downscaling)
    small, large = downscaling.chat(requests())
    assert small.ok and large.ok
    assert large.prompt_tokens + MAX_TOKENS <= MAX_MODEL_LEN
    sizes = spy.sent_sizes()
    assert sizes[0] == (56, 56) and 28 <= sizes[1][0] < 448 and sizes[1][0] == sizes[1][1]  # aspect kept
    assert downscaling.stats.extra["budget_downscaled"] == 1
    assert "; 1 downscaled to fit" in RunSummary([], [downscaling]).text()


def test_text_that_cannot_fit_is_refused_even_with_downscaling(roomy_qwen_dir: Path) -> None:
    serving = LocalModelVLMServing_hf(
        str(roomy_qwen_dir), device="cpu", max_tokens=MAX_TOKENS, max_model_len=48, allow_downscale=True
    )
    spy = Spy(serving)
    (completion,) = serving.chat([build_conversation("word " * 60, [Image.new("RGB", (56, 56))])])
    assert completion.error.startswith("PromptTooLongError") and "downscaling cannot help" in completion.error
    assert spy.batches == []
    serving.cleanup()


def test_the_limit_defaults_to_the_model_config_and_max_tokens_counts(tiny_qwen_dir: Path) -> None:
    serving = LocalModelVLMServing_hf(str(tiny_qwen_dir), device="cpu", max_tokens=4096)
    spy = Spy(serving)
    assert serving.context_length() == 2048  # the tiny config's max_position_embeddings
    (completion,) = serving.chat(requests()[:1])
    assert (
        completion.error.startswith("PromptTooLongError")
        and "+ 4096 new tokens > max model length 2048" in completion.error
    )
    assert spy.batches == []
    serving.cleanup()


def test_the_row_keeps_its_place_with_the_error(tmp_path: Path, strict: LocalModelVLMServing_hf) -> None:
    paths = []
    for name, size in (("small", (56, 56)), ("large", (448, 448)), ("small2", (60, 40))):
        Image.new("RGB", size, (120, 60, 30)).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    table = write_jsonl(tmp_path / "t.jsonl", [{"image": p, "prompt": "Describe it."} for p in paths])
    PromptedVQAGenerator(strict).run(FileStorage(str(table), cache_path=str(tmp_path / "cache")).step())
    rows = [
        json.loads(line) for line in (tmp_path / "cache" / "dataflow_cache_step_step1.jsonl").read_text().splitlines()
    ]
    assert [r["error"] is None for r in rows] == [True, False, True]
    assert rows[1]["error"].startswith("PromptTooLongError") and rows[1]["answer"] is None


@pytest.mark.parametrize("model_fixture", ["roomy_qwen_dir", "tiny_llava_dir"])
def test_the_size_only_estimate_equals_the_processor_count(model_fixture: str, request: pytest.FixtureRequest) -> None:
    processor = load_processor(request.getfixturevalue(model_fixture))
    counter = PromptTokenCounter(processor)
    sizes = [(56, 56), (448, 448), (640, 120), (90, 333), (1000, 1000)]
    conversations = [build_conversation("Describe the marked region.", [Image.new("RGB", s)]) for s in sizes]
    text = counter.render(split_images(conversations[0])[0])
    exact = [counter.exact(text, [Image.new("RGB", s)]) for s in sizes]
    assert counter.estimate(text, sizes[:1]) is None  # not calibrated yet
    checked, report = fit_to_budget(counter, conversations[:1], max_new_tokens=1, max_model_len=10_000)
    assert checked == conversations[:1] and report.too_long == 0
    assert [counter.estimate(text, [s]) for s in sizes] == exact
