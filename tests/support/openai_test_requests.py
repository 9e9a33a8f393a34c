"""What the fake OpenAI server (``testing.openai_test_server``) plans and records: faults, recorded
requests, and how it reads a request's text and images and builds its deterministic answer."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

DEFAULT_MODEL = "test-model"


@dataclass(frozen=True)
class Fault:
    """One planned misbehaviour; ``times`` None means forever (only for per-text faults)."""

    kind: str  # "status" | "hang" | "close" | "malformed" | "empty"
    status: int = 500
    retry_after: str | None = None
    message: str | None = None
    seconds: float = 0.0
    retry_after_ms: str | None = None
    times: int | None = None
    size: int = 0

    @classmethod
    def http(
        cls,
        status: int,
        times: int | None = None,
        retry_after: float | str | None = None,
        message: str | None = None,
        retry_after_ms: float | str | None = None,
    ) -> Fault:
        """An HTTP error answer (OpenAI-style error body), with ``Retry-After`` / ``retry-after-ms`` when given."""
        return cls(
            "status",
            status=status,
            retry_after=None if retry_after is None else str(retry_after),
            message=message,
            times=times,
            retry_after_ms=None if retry_after_ms is None else str(retry_after_ms),
        )

    @classmethod
    def hang(cls, seconds: float, times: int | None = None) -> Fault:
        return cls("hang", seconds=seconds, times=times)

    @classmethod
    def close(cls, times: int | None = None) -> Fault:
        return cls("close", times=times)

    @classmethod
    def trickle(cls, seconds_per_byte: float = 1.0, max_bytes: int = 120, times: int | None = None) -> Fault:
        return cls("trickle", seconds=seconds_per_byte, size=max_bytes, times=times)

    @classmethod
    def gzip_bomb(cls, inflated_bytes: int, times: int | None = None) -> Fault:
        return cls("gzip_bomb", size=inflated_bytes, times=times)

    @classmethod
    def malformed(cls, times: int | None = None, body: str | None = None) -> Fault:
        """HTTP 200 with a body that is not valid JSON (``body``, else a truncated chat completion)."""
        return cls("malformed", times=times, message=body)

    @classmethod
    def empty(cls, times: int | None = None) -> Fault:
        return cls("empty", times=times)


@dataclass
class RecordedRequest:
    """What the server saw and did for one request."""

    call: int
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when the body was not JSON
    raw: bytes
    arrived: float
    text: str = ""  # the last user text of the request
    fault: str | None = None
    status: int | None = None  # what was answered (None: nothing, connection closed)
    finished: float | None = None
    left: bool = False  # no longer counted in flight

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.fault is None

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def user_text(body: Any) -> str:
    """The text of the last user message of a chat-completions body (text parts joined)."""
    if not isinstance(body, dict):
        return ""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            ).strip()
    return ""


def image_urls(body: Any) -> list[str]:
    """Every ``image_url`` URL of a chat-completions body, in order."""
    urls: list[str] = []
    if not isinstance(body, dict):
        return urls
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                spec = part.get("image_url")
                urls.append(spec.get("url") if isinstance(spec, dict) else spec)
    return urls


def gzip_zeros(size: int) -> bytes:
    """A gzip body that inflates to ``size`` zero bytes (about size/1000 bytes on the wire)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [compressor.compress(block[: min(len(block), size - done)]) for done in range(0, size, len(block))]
    return b"".join(parts) + compressor.flush()


def default_answer(body: Any) -> str:
    return f"answer to: {user_text(body)[:40]}"


def answer_for_schema(schema: Any, text: str) -> Any:
    """A value matching ``schema`` (objects, strings with maxLength or a length-bounding pattern,
    numbers, booleans, arrays), its strings made of ``text`` as far as the schema allows."""
    if not isinstance(schema, dict):
        return text
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {key: answer_for_schema(sub, f"{key} {text}") for key, sub in properties.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    value = "".join(ch for ch in text if 32 <= ord(ch) < 127 and ch not in '"\\').strip() or "x"
    if schema.get("maxLength") is not None:
        value = value[: int(schema["maxLength"])]
    pattern = schema.get("pattern")
    while pattern and len(value) > 1 and re.fullmatch(pattern, value) is None:
        value = value[:-1]  # shorten until a length-bounding pattern accepts it
    return value
