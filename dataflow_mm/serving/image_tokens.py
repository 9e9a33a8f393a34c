"""Keep the model's image placeholder tokens out of user text.

A prompt that contains the model's own image token (``<image>`` in a LLaVA prompt,
``<|image_pad|>`` or ``<|vision_start|>`` for Qwen-VL) gets a second placeholder for one image,
and the request fails (or worse, the model reads the text as an image slot). The tokens are read
from the model's processor, never from a list per model name: the processor's ``*_token``
attributes (``image_token``, ``video_token``...) plus every added token of the tokenizer that the
chat template inserts for an image part (found by rendering one message with and without an image).
"""

from __future__ import annotations

from typing import Any

from dataflow_mm.serving.base import Conversation


def _rendered(processor: Any, with_image: bool) -> str:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": "x"}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=False, tokenize=False
    )
    return text[0] if isinstance(text, list) else text


def _image_marker(processor: Any) -> str:
    """The text the chat template puts in for one image part (e.g. ``<|vision_start|><|image_pad|><|vision_end|>``)."""
    try:
        with_image, without = _rendered(processor, True), _rendered(processor, False)
    except Exception:  # a processor without a chat template: only its *_token attributes count
        return ""
    start = 0
    while start < min(len(with_image), len(without)) and with_image[start] == without[start]:
        start += 1
    end = 0
    while end < min(len(with_image), len(without)) - start and with_image[-1 - end] == without[-1 - end]:
        end += 1
    return with_image[start : len(with_image) - end]


def image_placeholder_tokens(processor: Any) -> list[str]:
    """The processor's image/video placeholder tokens, longest first."""
    tokens = {
        value
        for name, value in vars(processor).items()
        if name.endswith("_token") and isinstance(value, str) and value.strip()
    }
    tokenizer = getattr(processor, "tokenizer", None)
    marker = _image_marker(processor)
    if marker and tokenizer is not None:
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        tokens.update(t.content for t in added.values() if getattr(t, "content", "") and t.content in marker)
    return sorted(tokens, key=lambda t: (-len(t), t))


def strip_tokens(text: str, tokens: list[str]) -> str:
    """``text`` with every occurrence of ``tokens`` removed (repeated until none is left)."""
    previous = None
    while previous != text:
        previous = text
        for token in tokens:
            text = text.replace(token, "")
    return text


def without_image_tokens(conversation: Conversation, tokens: list[str]) -> Conversation:
    """A copy of ``conversation`` whose text (string contents and text parts) holds none of ``tokens``."""
    if not tokens:
        return conversation
    messages: Conversation = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, str):
            content = strip_tokens(content, tokens)
        elif isinstance(content, list):
            content = [
                {**part, "text": strip_tokens(part["text"], tokens)}
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in content
            ]
        messages.append({**message, "content": content})
    return messages
