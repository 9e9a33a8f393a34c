"""Lone UTF-16 surrogates (``"\\ud800"`` in JSON) replaced by U+FFFD, wherever text enters the project.

JSON may spell a lone surrogate as an escape; Python then holds a string that no UTF-8 writer
(JSON lines, CSV, Parquet, an HTTP body) can encode. Rather than keeping it escaped, which only
JSON could carry, every such code point is replaced by U+FFFD (the Unicode replacement character)
when a table is read and when a model answer arrives, so each step file can be written in every
format. Paired surrogates never reach here: the JSON decoder joins them into one code point.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_LONE = re.compile("[\ud800-\udfff]")
# A JSON text that may hold a surrogate escape (high or low): only then is the decoded value walked.
_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def may_hold_surrogates(json_text: str) -> bool:
    """Cheap test on raw JSON text: False means its decoded value holds no surrogate."""
    return _ESCAPE.search(json_text) is not None


def replace_lone_surrogates(value: Any) -> Any:
    """``value`` with every surrogate code point in its strings (keys included) replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(replace_lone_surrogates(v) for v in value)
    return value
