"""The one serving interface every VLM backend implements.

A request is a conversation in OpenAI message form whose content parts may hold images::

    [{"role": "system", "content": "You are ..."},
     {"role": "user", "content": [{"type": "image", "image": <path | PIL.Image | bytes>},
                                  {"type": "text", "text": "Describe ..."}]}]

(``{"type": "image_url", "image_url": {"url": ...}}`` parts are accepted too.)
``chat`` takes many requests at once and returns one ``Completion`` per request, in order;
batching is the backend's job, never the caller's. A request that fails comes back with
``error`` set and ``text`` None: it is never answered with an error string.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dataflow_mm.common.errors import RunStoppedError
from dataflow_mm.common.surrogates import replace_lone_surrogates
from dataflow_mm.serving.messages import Conversation, build_conversation

FINISH_LENGTH = "length"  # the finish_reason of an answer cut off by max_tokens (vLLM and OpenAI name)


class EngineDiedError(RunStoppedError):
    """The model engine's process died: every later request would fail. In-process the run stops
    (a ``RunStoppedError``: the rows not answered stay pending, exit 3, rerun to continue); the Ray
    runner replaces the actor instead (its engine starts again) and retries the chunk."""


_RECORD_LOCK = threading.Lock()  # one for every ServingStats: a dataclass field would not pickle

# Sampling settings beyond the common four: None means "the backend's default" (and is left out of
# ``to_dict``, so runs that never set them keep their resume fingerprints).
EXTRA_SAMPLING_FIELDS = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of every backend: the common four, plus optional extras (``EXTRA_SAMPLING_FIELDS``)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # A JSON schema every answer must match (structured output), or None for free text.
    # Each backend translates it in ``dataflow_mm.serving.structured``.
    response_schema: dict[str, Any] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def extras(self) -> dict[str, Any]:
        """The extra settings that were set (name -> value)."""
        return {name: getattr(self, name) for name in EXTRA_SAMPLING_FIELDS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in EXTRA_SAMPLING_FIELDS:
            if data[name] is None:
                del data[name]
        if data.get("response_schema") is None:
            data.pop("response_schema", None)  # free text: the record stays as it was before schemas existed
        return data


def split_prefixed_sampling(kwargs: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({"top_k": 20}, rest)`` from ``{"vllm_top_k": 20, **rest}``: DataFlow-MM's prefixed sampling names."""
    sampling = {name: kwargs[prefix + name] for name in EXTRA_SAMPLING_FIELDS if prefix + name in kwargs}
    rest = {k: v for k, v in kwargs.items() if not (k.startswith(prefix) and k[len(prefix) :] in sampling)}
    return sampling, rest


@dataclass
class Completion:
    """One answer. Exactly one of ``text`` and ``error`` is set."""

    text: str | None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    token_ids: list[int] | None = None
    finish_reason: str | None = None  # "stop", or "length" when max_tokens cut the answer off

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def truncated(self) -> bool:
        """True when the answer stopped at ``max_tokens`` (vLLM's / OpenAI's ``finish_reason == "length"``)."""
        return self.finish_reason == FINISH_LENGTH


@dataclass
class ServingStats:
    """Counters a backend keeps for the end-of-run summary."""

    calls: int = 0
    requests: int = 0
    failed: int = 0
    retried: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, completions: Sequence[Completion]) -> None:
        with _RECORD_LOCK:  # chunks in flight at once (``concurrent_chunks``) record from several threads
            self._record(completions)

    def _record(self, completions: Sequence[Completion]) -> None:
        self.calls += 1
        self.requests += len(completions)
        for c in completions:
            self.failed += 0 if c.ok else 1
            self.truncated += 1 if c.ok and c.truncated else 0
            self.prompt_tokens += c.prompt_tokens or 0
            self.completion_tokens += c.completion_tokens or 0


class VLMServing(ABC):
    """Base class of the VLM backends (vLLM, transformers, OpenAI-compatible API)."""

    backend_name: str = "base"
    # How many chunks of one step may have requests in flight at once: 1 for a backend that keeps a
    # model busy itself; more for one that waits on I/O, so its pool stays full across chunk boundaries.
    concurrent_chunks: int = 1

    def __init__(self, sampling: SamplingParams | None = None) -> None:
        self.sampling = sampling or SamplingParams()
        self.stats = ServingStats()

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The hub id, local folder or endpoint model name this backend answers with."""

    @property
    def is_smoke_test_model(self) -> bool:
        """True when the model is a tiny random-weight stand-in whose text means nothing."""
        return False

    @abstractmethod
    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        """Answer ``conversations`` in order; the backend batches internally."""

    def chat(self, conversations: Sequence[Conversation], sampling: SamplingParams | None = None) -> list[Completion]:
        """Answer every conversation in one batched call; one Completion per request, in order.

        ``check_budget`` runs first: requests that cannot fit the context window are answered
        with an error here and never reach ``_chat_batch``.
        """
        if not conversations:
            return []
        sampling = sampling or self.sampling
        checked = self.check_budget(self.prepare_conversations(list(conversations)), sampling)
        if len(checked) != len(conversations):
            raise RuntimeError(
                f"{type(self).__name__}.check_budget returned {len(checked)} items for {len(conversations)}"
            )
        sent = [item for item in checked if not isinstance(item, Completion)]
        answers = self._chat_batch(sent, sampling) if sent else []
        if len(answers) != len(sent):
            raise RuntimeError(f"{type(self).__name__} returned {len(answers)} completions for {len(sent)} requests")
        remaining = iter(answers)
        completions = [item if isinstance(item, Completion) else next(remaining) for item in checked]
        completions = [_without_lone_surrogates(c) for c in completions]
        self.stats.record(completions)
        return completions

    def prepare_conversations(self, conversations: list[Conversation]) -> list[Conversation]:
        """The requests as the model should see them; local backends remove their image tokens from the text."""
        return conversations

    def check_budget(
        self, conversations: list[Conversation], sampling: SamplingParams
    ) -> list[Conversation | Completion]:
        """Before any model call: each request as it will be sent, or a Completion with the error that stops it.

        Local backends count each prompt with the model's processor (``serving.token_budget``);
        this default, for backends that know no limit, sends every request as it is.
        """
        return conversations

    def generate_from_input(
        self,
        user_inputs: Sequence[str],
        system_prompt: str = "",
        input_image_paths: Sequence[Any] | None = None,
    ) -> list[str | None]:
        """DataFlow-style convenience: one prompt (and optional image) per request, texts back."""
        images = list(input_image_paths) if input_image_paths is not None else [None] * len(user_inputs)
        conversations = [
            build_conversation(prompt, [image] if image is not None else [], system_prompt)
            for prompt, image in zip(user_inputs, images, strict=True)
        ]
        return [c.text for c in self.chat(conversations)]

    def describe(self) -> dict[str, Any]:
        """What produced the answers: recorded in step manifests and printed in summaries."""
        return {
            "backend": self.backend_name,
            "model": self.model_id,
            "sampling": self.sampling.to_dict(),
            "smoke_test_model": self.is_smoke_test_model,
        }

    def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Release the model and its memory; the next call loads it again."""


def _without_lone_surrogates(completion: Completion) -> Completion:
    """An answer (or error) holding a lone surrogate, e.g. an API's ``"\\ud800"``, with U+FFFD in its place."""
    for name in ("text", "error"):
        value = getattr(completion, name)
        if isinstance(value, str):
            setattr(completion, name, replace_lone_surrogates(value))
    return completion
