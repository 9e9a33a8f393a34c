"""The transformers backend on tiny Qwen2.5-VL and LLaVA-NeXT models (random weights, CPU).

Answers are meaningless text, so these tests check structure, order, counts, determinism and
call patterns, never wording.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dataflow_mm.common.errors import ModelNotAvailableError
from dataflow_mm.serving.base import Completion, SamplingParams
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.serving.messages import build_conversation

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


@pytest.fixture(scope="module", params=["tiny_qwen_dir", "tiny_llava_dir"])
def serving(request: pytest.FixtureRequest) -> Iterator[LocalModelVLMServing_hf]:
    """One loaded backend per architecture, shared by the tests of this module (float32, CPU)."""
    folder: Path = request.getfixturevalue(request.param)
    backend = LocalModelVLMServing_hf(str(folder), device="cpu", batch_size=2, temperature=0.0, max_tokens=8)
    yield backend
    backend.cleanup()


@pytest.fixture(scope="module")
def image_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same kinds of image a row may hold: a PIL image, a file path, encoded bytes."""
    folder = tmp_path_factory.mktemp("images")
    path = folder / "street.png"
    Image.new("RGB", (120, 80), (200, 30, 30)).save(path)
    encoded = io.BytesIO()
    Image.new("RGB", (64, 150), (20, 40, 220)).save(encoded, format="JPEG")
    return {"pil": Image.new("RGB", (90, 90), (30, 160, 60)), "path": str(path), "bytes": encoded.getvalue()}


def _requests(images: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return [
        build_conversation("Describe the region marked by the red box.", [images["pil"]]),
        build_conversation("Describe the image.", [images["path"]], system_prompt="Be brief."),
        build_conversation("What is the difference between the two images?", [images["bytes"], images["path"]]),
        build_conversation("Write a short caption.", [images["bytes"]]),
        build_conversation("A text-only request."),
    ]


class GenerateSpy:
    """Wraps ``model.generate`` to count calls and record batch sizes."""

    def __init__(self, generate: Any) -> None:
        self.generate = generate
        self.batch_sizes: list[int] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.batch_sizes.append(int(kwargs["input_ids"].shape[0]))
        return self.generate(**kwargs)


def test_one_completion_per_request_in_order(serving: LocalModelVLMServing_hf, image_sources: dict) -> None:
    requests = _requests(image_sources)

    completions = serving.chat(requests, GREEDY)

    assert len(completions) == len(requests)
    for completion in completions:
        assert isinstance(completion, Completion) and completion.ok
        assert isinstance(completion.text, str)
        assert completion.token_ids and all(isinstance(t, int) for t in completion.token_ids)
        assert completion.completion_tokens == len(completion.token_ids) <= GREEDY.max_tokens
        assert completion.prompt_tokens and completion.prompt_tokens > 0
    # The two-image request carries more image tokens than the one-image requests.
    assert completions[2].prompt_tokens > completions[3].prompt_tokens


def test_greedy_batched_equals_one_at_a_time(serving: LocalModelVLMServing_hf, image_sources: dict) -> None:
    requests = _requests(image_sources)

    batched = serving.chat(requests, GREEDY)
    single = [serving.chat([request], GREEDY)[0] for request in requests]
    again = serving.chat(requests, GREEDY)

    assert [c.token_ids for c in batched] == [c.token_ids for c in single]  # left padding is right
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in single]
    assert [c.token_ids for c in batched] == [c.token_ids for c in again]


def test_generate_called_once_per_batch(
    serving: LocalModelVLMServing_hf, image_sources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    serving.load()
    spy = GenerateSpy(serving.model.generate)
    monkeypatch.setattr(serving.model, "generate", spy)
    requests = _requests(image_sources)

    serving.chat(requests, GREEDY)

    assert len(spy.batch_sizes) == math.ceil(len(requests) / serving.batch_size)
    assert spy.batch_sizes == [2, 2, 1]


def test_next_batch_is_prepared_while_generate_runs_and_each_template_renders_once(
    serving: LocalModelVLMServing_hf, image_sources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch i+1's decode, template and processor run in another thread during batch i's ``generate``."""
    serving.load()
    events: list[tuple[str, str, float]] = []
    generate, processed = serving.model.generate, serving._processed

    def slow_generate(**kwargs: Any) -> Any:
        events.append(("generate start", threading.current_thread().name, time.monotonic()))
        time.sleep(0.3)  # a model that takes a while: preparing the next batch fits inside it
        out = generate(**kwargs)
        events.append(("generate end", threading.current_thread().name, time.monotonic()))
        return out

    def spy_processed(chunk: Any) -> Any:
        events.append(("prepared", threading.current_thread().name, time.monotonic()))
        return processed(chunk)

    renders: list[int] = []
    template = serving.processor.apply_chat_template
    monkeypatch.setattr(serving.model, "generate", slow_generate)
    monkeypatch.setattr(serving, "_processed", spy_processed)
    monkeypatch.setattr(
        serving.processor, "apply_chat_template", lambda *a, **k: renders.append(1) or template(*a, **k)
    )
    requests = _requests(image_sources)

    prefetched = serving.chat(requests, GREEDY)

    assert len(renders) == len(requests)  # once per request: the budget check's text is the one sent
    kinds = [kind for kind, _, _ in events]
    assert kinds.count("prepared") == 3 and kinds.count("generate start") == 3
    first_end = next(t for kind, _, t in events if kind == "generate end")
    second_prepared = [t for kind, _, t in events if kind == "prepared"][1]
    assert second_prepared < first_end  # prepared during the first generate
    assert {name for kind, name, _ in events if kind == "prepared"} != {threading.current_thread().name}
    monkeypatch.undo()
    assert [c.token_ids for c in prefetched] == [serving.chat([r], GREEDY)[0].token_ids for r in requests]


def test_unloadable_image_fails_only_its_request(
    serving: LocalModelVLMServing_hf, image_sources: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    serving.load()
    spy = GenerateSpy(serving.model.generate)
    monkeypatch.setattr(serving.model, "generate", spy)
    requests = _requests(image_sources)
    requests.insert(1, build_conversation("Describe.", ["/no/such/image.png"]))
    failed_before = serving.stats.failed

    completions = serving.chat(requests, GREEDY)

    assert len(completions) == len(requests)
    assert completions[1].text is None
    assert completions[1].error is not None and completions[1].error.startswith("ImageNotFoundError: ")
    assert all(c.ok and c.text is not None for i, c in enumerate(completions) if i != 1)
    assert serving.stats.failed == failed_before + 1
    assert spy.batch_sizes == [2, 2, 1]  # the failed request leaves no hole in the batches


def test_sampling_with_a_seed_is_reproducible(serving: LocalModelVLMServing_hf, image_sources: dict) -> None:
    requests = _requests(image_sources)[:2]
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=6, seed=1234)

    first, second = serving.chat(requests, sampling), serving.chat(requests, sampling)

    assert [c.token_ids for c in first] == [c.token_ids for c in second]


def test_answers_cut_at_max_tokens_are_marked_truncated(serving: LocalModelVLMServing_hf, image_sources: dict) -> None:
    before = serving.stats.truncated
    out = serving.chat(_requests(image_sources), SamplingParams(temperature=0.0, max_tokens=2))
    assert all(c.ok and c.finish_reason in ("stop", "length") for c in out)
    assert [c.truncated for c in out] == [c.completion_tokens == 2 for c in out]
    assert any(c.truncated for c in out)  # a random tiny model rarely ends within 2 tokens
    assert serving.stats.truncated - before == sum(c.truncated for c in out)


def test_identity_and_smoke_test_flag(serving: LocalModelVLMServing_hf) -> None:
    described = serving.describe()

    assert serving.backend_name == "hf" == described["backend"]
    assert serving.model_id == serving.hf_model_name_or_path == described["model"]
    assert serving.is_smoke_test_model and described["smoke_test_model"] is True


def test_nothing_loads_before_first_chat_and_cleanup_releases(tiny_qwen_dir: Path, image_sources: dict) -> None:
    backend = LocalModelVLMServing_hf(str(tiny_qwen_dir), device="cpu", batch_size=4, max_tokens=4)
    assert backend.model is None and backend.processor is None
    assert backend.is_smoke_test_model  # known without loading

    assert backend.chat([build_conversation("Describe.", [image_sources["pil"]])], GREEDY)[0].ok
    assert backend.model is not None and backend.processor is not None

    backend.cleanup()
    assert backend.model is None and backend.processor is None
    assert backend.chat([build_conversation("Describe.", [image_sources["pil"]])], GREEDY)[0].ok  # reloads
    backend.cleanup()


def test_missing_model_fails_on_first_chat_not_before(tmp_path: Path) -> None:
    backend = LocalModelVLMServing_hf(str(tmp_path / "no-model"))
    assert not backend.is_smoke_test_model

    with pytest.raises(ModelNotAvailableError, match="--model_path"):
        backend.chat([build_conversation("Describe.")])


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        LocalModelVLMServing_hf("some/model", batch_size=0)


def test_describe_is_the_same_before_and_after_loading(tiny_qwen_dir: Path) -> None:
    """describe() feeds the resume fingerprint: loading the model must not change it."""
    serving = LocalModelVLMServing_hf(str(tiny_qwen_dir), device="auto", max_tokens=2)
    before = serving.describe()
    serving.load()
    assert serving.describe() == before
    serving.cleanup()


def test_the_serving_pickles_before_loading_with_a_fresh_lock(tiny_qwen_dir: Path) -> None:
    """Ray ships servings to its workers by pickling them: the prefetch thread's lock must not travel."""
    import pickle

    from dataflow_mm import LocalModelVLMServing_hf

    serving = LocalModelVLMServing_hf(str(tiny_qwen_dir), max_tokens=4)
    copy = pickle.loads(pickle.dumps(serving))
    assert copy.describe() == serving.describe()
    assert copy._tokenizer_lock is not serving._tokenizer_lock and copy._tokenizer_lock.acquire(blocking=False)
