"""A fast, deterministic stand-in for a VLM backend, for testing operator logic and benchmarks.

It honours the serving contract (one Completion per request, in order; failures as errors,
never as text), loads each image like a real backend would, and records the batched calls
(``calls``: the latest calls, holding at least the last ``window`` requests and at most twice
that; ``calls.total`` counts every call).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from dataflow_mm.common.errors import RowError, ServingError, row_error_text
from dataflow_mm.serving.base import Completion, Conversation, SamplingParams, VLMServing
from dataflow_mm.serving.messages import split_images, to_pil
from tests.support.bounded_log import DEFAULT_WINDOW, BoundedLog


class FakeVLMServing(VLMServing):
    """Answers ``"fake answer <n>: <prompt head>"``; ``fail_when(prompt)`` True makes that request fail."""

    backend_name = "fake"

    def __init__(
        self,
        fail_when: Callable[[str], bool] | None = None,
        load_images: bool = True,
        sampling: SamplingParams | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        super().__init__(sampling)
        self.fail_when = fail_when or (lambda _prompt: False)
        self.load_images = load_images
        self.calls: BoundedLog = BoundedLog(window, size=len)  # recent calls holding at least `window` requests

    @property
    def model_id(self) -> str:
        return "fake-vlm"

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        self.calls.append(list(conversations))
        completions = []
        for index, conversation in enumerate(conversations):
            messages, images = split_images(conversation)
            prompt = " ".join(p["text"] for m in messages for p in m["content"] if p.get("type") == "text")
            try:
                sizes = [to_pil(image).size for image in images] if self.load_images else []
                if self.fail_when(prompt):
                    raise ServingError(f"fake failure for request {index}")
            except RowError as exc:
                completions.append(Completion(text=None, error=row_error_text(exc)))
                continue
            text = f"fake answer: {prompt[-60:]} {sizes}"
            completions.append(Completion(text=text, prompt_tokens=len(prompt.split()), completion_tokens=8))
        return completions


class RegionAnswers(VLMServing):
    """Answers a region-caption prompt ("There are N regions") with one line per region ``k`` in
    ``regions(N)``, written by ``line(k)``: the answer a captioning model gives, shaped as a test needs."""

    backend_name = "fake"
    model_id = "fake-vlm"

    def __init__(self, line: Callable[[int], str], regions: Callable[[int], range] = lambda n: range(1, n + 1)) -> None:
        super().__init__()
        self.line = line
        self.regions = regions

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        out = []
        for conversation in conversations:
            text = " ".join(p.get("text", "") for m in conversation for p in m["content"] if isinstance(p, dict))
            count = int(re.search(r"There are (\d+) regions", text).group(1))  # type: ignore[union-attr]
            out.append(Completion("\n".join(f"<region{k}>: {self.line(k)}" for k in self.regions(count))))
        return out
