"""Build and take apart OpenAI-style chat messages that carry images.

The message types live here, below ``serving.base`` (which imports them): one direction only.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from dataflow_mm.imaging.loading import Reduction

Message = dict[str, Any]
Conversation = list[Message]
ImageLike = Any  # str | os.PathLike | PIL.Image.Image | bytes


def build_conversation(prompt: str, images: Sequence[ImageLike] = (), system_prompt: str = "") -> Conversation:
    """A one-turn conversation: optional system message, then the images followed by the prompt."""
    content: list[dict[str, Any]] = [{"type": "image", "image": image} for image in images]
    content.append({"type": "text", "text": prompt})
    messages: Conversation = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": content})
    return messages


def _image_from_part(part: dict[str, Any]) -> ImageLike:
    if part.get("type") == "image":
        return part.get("image")
    url = part["image_url"]["url"] if isinstance(part.get("image_url"), dict) else part.get("image_url")
    if isinstance(url, str) and url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    return url


def is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image", "image_url")


def split_images(conversation: Conversation) -> tuple[list[Message], list[ImageLike]]:
    """Template-ready messages (images replaced by ``{"type": "image"}`` placeholders) and the images in order.

    String contents become a single text part, so every chat template sees one shape.
    """
    template_messages: list[Message] = []
    images: list[ImageLike] = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, str):
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
        else:
            parts = []
            for part in content or []:
                if is_image_part(part):
                    images.append(_image_from_part(part))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
        template_messages.append({"role": message["role"], "content": parts})
    return template_messages, images


def to_pil(image: ImageLike, reduce: Reduction | None = None) -> Image.Image:
    """An in-memory RGB image from a path, bytes or PIL image (EXIF orientation applied; a JPEG decoded at the
    size ``reduce`` gives, see ``imaging.loading.load_image``)."""
    from dataflow_mm.imaging.loading import load_image

    return load_image(image, reduce=reduce)
