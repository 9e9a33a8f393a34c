"""A watchdog for one network exchange: when its time is up it shuts the connection's socket down.

Socket timeouts bound each read, so a server that trickles one byte per second never trips them.
``Deadline`` bounds the whole exchange instead: the request's code hands it the socket as the
connection opens (httpcore's trace events for the API backend, ``watch`` for ``urllib`` image
downloads), and the timer's ``shutdown`` ends any blocked read at once. Shared by
``serving.http_reply`` (API requests) and ``storage.downloads`` (image URLs).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any


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
