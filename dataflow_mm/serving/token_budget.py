"""Token budget: every request is checked against the context window before any model sees it.

A request's prompt length is counted with the model's own processor, images included:
``len(processor(text=[chat text], images=images)["input_ids"][0])``. That applies the processor's
own settings (min/max pixels, patch and merge sizes, any-resolution tiling), for any architecture.
The prompt plus the request's ``max_tokens`` must fit the backend's max model length. A request
that does not fit is, when ``allow_downscale`` is set, sent with its images shrunk (by the square
root of the overflow, recounted, a few rounds); otherwise, or when even that fails, it is answered
with a ``PromptTooLongError`` Completion and never sent, instead of failing inside the engine.

Counting exactly means preprocessing every image one extra time. When the processor can tell an
image's token count from its size alone (``_get_num_multimodal_tokens``, the hook vLLM uses), a
request is first *estimated* from its images' headers, with a per-image offset calibrated against
one exact count. Only requests whose estimate comes within a safety margin of the limit are
counted exactly, so every decision near the limit is exact and the others cost a header read and
a tokenization.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from dataflow_mm.common.errors import PromptTooLongError, RowError, ServingError, row_error_text
from dataflow_mm.imaging.loading import image_size
from dataflow_mm.serving.base import Completion, Conversation, ServingStats
from dataflow_mm.serving.messages import is_image_part, split_images, to_pil

MIN_IMAGE_SIDE = 28  # downscaling never goes below this (vision encoders need a patch or two)
DOWNSCALE_ROUNDS = 6
SAFETY = 0.95  # each downscale round aims a little below the limit


def limit_side(image: Image.Image, max_side: int | None) -> Image.Image:
    """``image`` scaled down (aspect kept) so its longer side is at most ``max_side``."""
    if not max_side or max(image.size) <= max_side:
        return image
    width, height = _limited_size(image.size, max_side)
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _limited_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    if not max_side or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def max_len_from_config(config: Any) -> int | None:
    """The context length a transformers model config declares (its text model's max positions)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for source in (text_config, config):
        value = getattr(source, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class PromptTokenCounter:
    """Counts a request's prompt tokens, images included, with the model's processor."""

    def __init__(self, processor: Any, processor_kwargs: dict[str, Any] | None = None) -> None:
        self.processor = processor
        self.processor_kwargs = dict(processor_kwargs or {})
        self._can_estimate = callable(getattr(processor, "_get_num_multimodal_tokens", None))
        self._image_offset: int | None = None  # exact - text tokens - image tokens, per image
        self._renders: dict[str, str] = {}  # template messages (as JSON) -> prompt text

    def render(self, template_messages: list[dict[str, Any]]) -> str:
        """The prompt text the model's chat template makes of the messages.

        Remembered until ``forget_renders``, so the backend that checked a request's budget sends
        it with the same text without rendering the template a second time.
        """
        key = json.dumps(template_messages, sort_keys=True)
        prompt = self._renders.get(key)
        if prompt is None:
            prompt = self._renders[key] = self.render_now(template_messages)
        return prompt

    def take_render(self, template_messages: list[dict[str, Any]]) -> str:
        """``render``'s text, forgotten once taken: the request it was counted for is being sent (other
        calls in flight keep theirs)."""
        prompt = self._renders.pop(json.dumps(template_messages, sort_keys=True), None)
        return prompt if prompt is not None else self.render_now(template_messages)

    def render_now(self, template_messages: list[dict[str, Any]]) -> str:
        """The prompt text of the chat template, not remembered."""
        rendered = self.processor.apply_chat_template(template_messages, add_generation_prompt=True, tokenize=False)
        return rendered[0] if isinstance(rendered, list) else rendered

    def forget_renders(self) -> None:
        """Drop the remembered prompt texts (a backend calls it once its call is answered)."""
        self._renders.clear()

    def exact(self, text: str, images: Sequence[Image.Image]) -> int:
        """Prompt tokens as the processor makes them (images expanded to their placeholder tokens)."""
        encoded = self.processor(text=[text], images=list(images) or None, **self.processor_kwargs)
        return len(encoded["input_ids"][0])

    def text_tokens(self, text: str) -> int:
        """Tokens of the text alone (each image placeholder unexpanded)."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return len(tokenizer(text)["input_ids"])

    def _image_tokens(self, sizes: Sequence[tuple[int, int]]) -> list[int] | None:
        if not self._can_estimate:
            return None
        try:
            data = self.processor._get_num_multimodal_tokens(
                image_sizes=[(h, w) for w, h in sizes], **self.processor_kwargs
            )
            counts = getattr(data, "num_image_tokens", None)
            if counts is None or len(counts) != len(sizes):
                raise ValueError(f"no image token counts in {data!r}")
            return [int(c) for c in counts]
        except Exception:  # any processor without a working size-only count: always count exactly
            self._can_estimate = False
            return None

    def estimate(self, text: str, sizes: Sequence[tuple[int, int]]) -> int | None:
        """Prompt tokens from image sizes alone, once calibrated; None when no estimate is possible."""
        if self._image_offset is None:
            return None
        tokens = self._image_tokens(sizes)
        if tokens is None:
            return None
        return self.text_tokens(text) + sum(tokens) + self._image_offset * len(sizes)

    def calibrate(self, text: str, sizes: Sequence[tuple[int, int]], exact: int) -> None:
        """Learn the per-image offset of ``estimate`` from one exact count (of a request with images)."""
        if self._image_offset is not None or not sizes:
            return
        tokens = self._image_tokens(sizes)
        if tokens is None:
            return
        offset, remainder = divmod(exact - self.text_tokens(text) - sum(tokens), len(sizes))
        if remainder:
            self._can_estimate = False
        else:
            self._image_offset = offset


@dataclass
class BudgetReport:
    """What a budget check did to one batch of requests."""

    too_long: int = 0
    downscaled: int = 0

    def record(self, stats: ServingStats) -> None:
        for name in ("too_long", "downscaled"):
            value = getattr(self, name)
            if value:
                stats.extra[f"budget_{name}"] = stats.extra.get(f"budget_{name}", 0) + value


def fit_to_budget(
    counter: PromptTokenCounter,
    conversations: Sequence[Conversation],
    *,
    max_new_tokens: int,
    max_model_len: int,
    allow_downscale: bool = False,
    max_image_side: int | None = None,
) -> tuple[list[Conversation | Completion], BudgetReport]:
    """Each request as it should be sent (maybe with smaller images), or a Completion saying why it is not.

    ``max_image_side`` is a shrink the backend applies to every image anyway (counted the same way).
    """
    report = BudgetReport()
    checked: list[Conversation | Completion] = []
    for conversation in conversations:
        try:
            checked.append(
                _fit(counter, conversation, max_new_tokens, max_model_len, allow_downscale, max_image_side, report)
            )
        except RowError as exc:
            checked.append(Completion(text=None, error=row_error_text(exc)))
    return checked, report


def _fit(
    counter: PromptTokenCounter,
    conversation: Conversation,
    max_new_tokens: int,
    max_model_len: int,
    allow_downscale: bool,
    max_image_side: int | None,
    report: BudgetReport,
) -> Conversation:
    template_messages, sources = split_images(conversation)
    limit = max_model_len - max_new_tokens
    try:
        text = counter.render(template_messages)
    except Exception as exc:
        raise ServingError(f"the chat template failed for this conversation: {exc}") from exc
    sizes = [_limited_size(image_size(source), max_image_side) for source in sources]
    estimate = counter.estimate(text, sizes) if sources else None
    if estimate is not None and estimate <= limit - max(16, limit // 50):
        return conversation
    images = [limit_side(to_pil(source), max_image_side) for source in sources]
    tokens = _count(counter, text, images)
    counter.calibrate(text, sizes, tokens)
    if tokens <= limit:
        return conversation
    message = (
        f"prompt of {tokens} tokens ({len(images)} image(s) included) + {max_new_tokens} new tokens"
        f" > max model length {max_model_len}"
    )
    if allow_downscale and images:
        smaller, smaller_tokens = _downscale(counter, text, images, tokens, limit)
        if smaller_tokens <= limit:
            report.downscaled += 1
            return _with_images(conversation, smaller)
        if smaller is images:
            message += f"; downscaling cannot help (the text alone is about {counter.text_tokens(text)} tokens)"
        else:
            sizes_text = ", ".join(f"{i.width}x{i.height}" for i in smaller)
            message += f"; with images downscaled to {sizes_text} still {smaller_tokens} tokens"
    elif images:
        message += "; allow_downscale=True would shrink its images to fit"
    report.too_long += 1
    raise PromptTooLongError(message)


def _count(counter: PromptTokenCounter, text: str, images: Sequence[Image.Image]) -> int:
    try:
        return counter.exact(text, images)
    except Exception as exc:  # e.g. an image too small or too elongated for the processor
        raise ServingError(f"the processor could not prepare this request: {type(exc).__name__}: {exc}") from exc


def _downscale(
    counter: PromptTokenCounter, text: str, images: list[Image.Image], tokens: int, limit: int
) -> tuple[list[Image.Image], int]:
    """Images shrunk until the prompt fits ``limit`` (or as far as they go), and the prompt's tokens then."""
    text_tokens = counter.text_tokens(text)
    room = limit - text_tokens
    current, scale = images, 1.0
    for _ in range(DOWNSCALE_ROUNDS):
        image_tokens = max(tokens - text_tokens, 1)
        if room <= 0:
            break
        scale *= math.sqrt(room / image_tokens) * SAFETY
        smaller = [_scaled(image, scale) for image in images]
        if [i.size for i in smaller] == [i.size for i in current]:
            break  # already at the smallest size
        current, tokens = smaller, _count(counter, text, smaller)
        if tokens <= limit:
            break
    return current, tokens


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    width = max(MIN_IMAGE_SIDE, round(image.width * scale))
    height = max(MIN_IMAGE_SIDE, round(image.height * scale))
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _with_images(conversation: Conversation, images: Sequence[Image.Image]) -> Conversation:
    """A copy of ``conversation`` whose image parts hold ``images``, in order."""
    remaining = iter(images)
    messages: Conversation = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": "image", "image": next(remaining)} if is_image_part(p) else p for p in content]
        messages.append({**message, "content": content})
    return messages
