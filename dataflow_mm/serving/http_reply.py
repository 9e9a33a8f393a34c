"""Bounds on one HTTP request: a deadline for the whole exchange, and a cap on the reply's size.

httpx's timeouts bound each read, so a server that trickles one byte per second never trips
them. ``Deadline`` is a watchdog: when the request's time is up it shuts the connection's socket
down, which ends any blocked read at once. The socket is taken from httpcore's trace events as
the connection opens, so requests must not reuse pooled connections (the client is built without
keep-alive). ``read_reply`` reads the body while counting the decompressed bytes, so a small
gzip bomb cannot inflate to gigabytes: past ``limit`` it stops with ``ReplyTooLargeError``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import zlib
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_RESPONSE_BYTES = 4 * 2**20  # 4 MiB, decompressed: far above any chat answer
ACCEPT_ENCODING = "gzip, deflate"  # the encodings read_reply can decode within the cap


class ReplyTooLargeError(Exception):
    """The reply is larger than the accepted size (or uses an encoding that cannot be bounded)."""


class Deadline:
    """A watchdog for one request: ``with Deadline(s) as d: client.stream(..., extensions={"trace": d.trace})``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: remember the socket of the connection this request opens."""
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        self.watch(stream.get_extra_info("socket") if stream is not None else None)

    def watch(self, sock: socket.socket | None) -> socket.socket | None:
        """Cut ``sock`` when the time is up (at once if it is already); returns it (for ``urllib`` connections)."""
        with self._lock:
            self._socket = sock
            expired = self.expired
        if expired:
            self._cut(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sock = self._socket
        self._cut(sock)

    @staticmethod
    def _cut(sock: socket.socket | None) -> None:
        if sock is None:
            return
        # The plain socket's shutdown (also for a TLS socket, whose own shutdown would drop its SSL
        # state under the reading thread): wakes a blocked recv/send in the request's thread.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


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
