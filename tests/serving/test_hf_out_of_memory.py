"""The transformers backend when the device runs out of memory (issue 23 item 1, hf backend).

The tiny Qwen2.5-VL runs for real on the CPU; only the out-of-memory error is injected, as CUDA's
allocator raises it (``torch.OutOfMemoryError``), around the model's own ``generate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dataflow_mm.common.errors import ROW_PENDING, error_class_of, row_outcome
from dataflow_mm.serving.base import SamplingParams
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.serving.messages import build_conversation

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

GREEDY = SamplingParams(temperature=0.0, max_tokens=6)


@pytest.fixture(scope="module")
def serving(tiny_qwen_dir: Path) -> Iterator[LocalModelVLMServing_hf]:
    backend = LocalModelVLMServing_hf(str(tiny_qwen_dir), device="cpu", batch_size=2, temperature=0.0, max_tokens=6)
    yield backend
    backend.cleanup()


def requests() -> list[Any]:
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    return [build_conversation(f"Describe image {i}.", [Image.new("RGB", (64, 48), c)]) for i, c in enumerate(colors)]


class OutOfMemoryAbove:
    """``model.generate`` that raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, generate: Any, limit: int) -> None:
        self.generate = generate
        self.limit = limit
        self.batch_sizes: list[int] = []

    def __call__(self, **kwargs: Any) -> Any:
        size = int(kwargs["input_ids"].shape[0])
        self.batch_sizes.append(size)
        if size > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.generate(**kwargs)


def test_a_batch_without_room_is_generated_one_request_at_a_time(
    serving: LocalModelVLMServing_hf, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = [serving.chat([r], GREEDY)[0].token_ids for r in requests()]
    spy = OutOfMemoryAbove(serving.model.generate, limit=1)
    monkeypatch.setattr(serving.model, "generate", spy)

    out = serving.chat(requests(), GREEDY)

    assert [c.ok for c in out] == [True] * 5
    assert [c.token_ids for c in out] == expected  # the same answers as one request at a time
    assert spy.batch_sizes == [2, 1, 1, 2, 1, 1, 1]


def test_a_request_without_room_even_alone_is_left_pending(
    serving: LocalModelVLMServing_hf, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = OutOfMemoryAbove(serving.model.generate, limit=0)
    monkeypatch.setattr(serving.model, "generate", spy)

    out = serving.chat(requests()[:3], GREEDY)

    assert all(c.text is None for c in out)
    assert all(error_class_of(c.error) == "ServingUnavailableError" for c in out)
    assert all(row_outcome(c.error) == ROW_PENDING and "out of device memory" in c.error for c in out)
    assert spy.batch_sizes == [2, 1, 1, 1]
