"""Media placeholder tokens in exported text: only the export puts them there, one per image.

LLaVA and LLaMA-Factory count ``<image>`` in a sample's text and reject a sample whose count differs
from its images (LLaMA-Factory likewise ``<video>`` and ``<audio>``, its ``VIDEO_PLACEHOLDER`` and
``AUDIO_PLACEHOLDER`` defaults). A model that wrote ``<image>`` in its answer, or an input prompt that
holds one, would break that count, so such a token in a question or an answer loses its brackets
(``<image>`` becomes ``image``): the words stay readable and no placeholder is left but the export's own.
"""

from __future__ import annotations

import re

IMAGE_TOKEN = "<image>"
PLACEHOLDERS = (IMAGE_TOKEN, "<video>", "<audio>")
_TOKEN = re.compile("|".join(re.escape(t) for t in PLACEHOLDERS))


def without_placeholders(text: str) -> str:
    """``text`` with every media placeholder token written as its bare word."""
    return _TOKEN.sub(lambda match: match.group(0)[1:-1], text)


def placeholder_count(text: str) -> int:
    """How many media placeholder tokens ``text`` holds."""
    return len(_TOKEN.findall(text))
