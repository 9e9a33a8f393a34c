"""A fake serving that can be "down" for some requests: those rows come back pending, as the API
backend reports a server that does not answer (``ServingUnavailableError``), or raise ``RunStoppedError``.

It counts every request it is sent (``sent``: prompt -> times), so a test can tell which rows a rerun
sent again. ``down(prompt)`` True: that request is not answered (its row stays pending);
``stop_after``: after that many requests in total the next call raises ``RunStoppedError``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence

from dataflow_mm.common.errors import RunStoppedError, ServingUnavailableError, row_error_text
from dataflow_mm.serving.base import Completion, Conversation, SamplingParams
from dataflow_mm.serving.messages import split_images
from tests.support.fake_serving import FakeVLMServing


def prompt_of(conversation: Conversation) -> str:
    messages, _ = split_images(conversation)
    return " ".join(p["text"] for m in messages for p in m["content"] if p.get("type") == "text")


class FlakyServing(FakeVLMServing):
    """:class:`FakeVLMServing` whose requests may be left unanswered (see the module docstring)."""

    def __init__(
        self,
        down: Callable[[str], bool] | None = None,
        stop_after: int | None = None,
        fail_when: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(fail_when=fail_when, load_images=False)
        self.down = down or (lambda _prompt: False)
        self.stop_after = stop_after
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def requests(self) -> int:
        return sum(self.sent.values())

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        prompts = [prompt_of(c) for c in conversations]
        with self._lock:
            if self.stop_after is not None and self.requests >= self.stop_after:
                raise RunStoppedError("the fake server stopped answering")
            self.sent.update(prompts)
        answered = super()._chat_batch(conversations, sampling)
        unavailable = row_error_text(ServingUnavailableError("connection refused (fake)"))
        return [
            Completion(text=None, error=unavailable) if self.down(prompt) else completion
            for prompt, completion in zip(prompts, answered, strict=True)
        ]
