"""Bounds on one HTTP request: a deadline for the whole exchange, and a cap on the reply's size.

httpx's timeouts bound each read, so a server that trickles one byte per second never trips
them. ``Deadline`` is a watchdog: when the request's time is up it shuts the connection's socket
down, which ends any blocked read at once. The socket is taken from httpcore's trace events as
the connection opens, so requests must not reuse pooled connections (the client is built without
keep-alive). ``read_reply`` reads the body while counting the decompressed bytes, so a small
gzip bomb cannot inflate to gigabytes: past ``limit`` it stops with ``ReplyTooLargeError``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_RESPONSE_BYTES = 4 * 2**20  # 4 MiB, decompressed: far above any chat answer
ACCEPT_ENCODING = "gzip, deflate"  # the encodings read_reply can decode within the cap


class ReplyTooLargeError(Exception):
    """The reply is larger than the accepted size (or uses an encoding that cannot be bounded)."""


@dataclass
class Reply:
    """A reply read in full (within the cap): what the response parsing needs."""

    status_code: int
    headers: Any
    content: bytes
    reason_phrase: str = ""
    charset: str | None = None

    @property
    def text(self) -> str:
        return self.content.decode(self.charset or "utf-8", errors="replace")


def _decoder(encoding: str) -> Any:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise ReplyTooLargeError(f"reply uses content-encoding {encoding!r}, which cannot be read within the size cap")


def read_reply(response: Any, limit: int) -> Reply:
    """The body of a streamed httpx ``response``, decompressed, refused past ``limit`` bytes."""
    declared = response.headers.get("content-length", "")
    too_large = f"reply larger than {limit} bytes (api max_response_bytes)"
    if declared.isdigit() and int(declared) > limit:
        raise ReplyTooLargeError(f"{too_large}: it declares {declared} bytes")
    decoder = _decoder(response.headers.get("content-encoding", ""))
    body = bytearray()
    for chunk in response.iter_raw():
        if decoder is None:
            body += chunk
        else:
            body += decoder.decompress(chunk, limit + 1 - len(body))
        if len(body) > limit:
            raise ReplyTooLargeError(too_large)
    if decoder is not None:
        body += decoder.flush()
        if len(body) > limit:
            raise ReplyTooLargeError(too_large)
    return Reply(response.status_code, response.headers, bytes(body), response.reason_phrase, response.charset_encoding)
