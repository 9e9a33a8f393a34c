"""A real, configurable fake OpenAI-compatible chat-completions server, for tests and demos.

It listens on 127.0.0.1 (port 0 = any free port) in a background thread and answers
``POST /v1/chat/completions`` (``/chat/completions`` too) with a deterministic text derived
from the request, ``"answer to: <first 40 chars of the last user text>"``, plus ``usage``.
``GET /v1/models`` lists the one model name.

Faults can be planned per call number (global arrival order, 0-based) or per request (a
substring of the user text), each for a number of times or forever::

    with OpenAITestServer(fail_first_n=(500, 2)) as server:          # calls 0 and 1 get HTTP 500
        ...
    OpenAITestServer(fail_first_n=(429, 1, "0.05"))                  # ... with Retry-After: 0.05
    OpenAITestServer(faults_by_text={"row 3": Fault.http(500, times=2)})
    OpenAITestServer(status_for_text={"forbidden": 401})             # always 401 for that prompt
    OpenAITestServer(plan=[Fault.hang(5), None, Fault.close()])      # call 0 hangs, call 2 is dropped

Fault kinds: ``status`` (an HTTP error with an OpenAI-style error body, optional Retry-After),
``hang`` (no answer for ``seconds``, then a normal answer if the client is still there),
``close`` (the connection is closed without any response), ``malformed`` (200 with a body that
is not valid JSON), ``empty`` (200 with ``"choices": []``), ``trickle`` (a normal answer sent one
byte every ``seconds``, at most ``size`` bytes, stopping when the client leaves or the server
closes), ``gzip_bomb`` (200, ``Content-Encoding: gzip``, a body inflating to ``size`` bytes).

``echo_authorization=True`` makes every error message quote the ``Authorization`` header the
server received (as some servers and proxies do), to test that a key never reaches a row or log.

Structured outputs: a request with ``response_format = {"type": "json_schema", ...}`` is answered
with JSON matching the schema (``answer_for_schema``), or refused with HTTP 400 as a server
without structured outputs does (``structured_outputs=False``); ``schema_answer_fn(schema, body)``
writes the answer instead (cut at ``max_tokens`` like a free answer: one word, one token).

Requests are recorded (``server.requests``: body, headers, arrival/finish times, what was
answered; the last ``window`` requests at least, so a long benchmark's memory stays flat;
``server.requests.total`` counts them all) and ``server.max_in_flight`` is the largest number of
requests being handled at once;
``delay`` makes every answer take that long, so that concurrency is observable.

Shutdown (``close()`` / leaving the ``with`` block) releases hanging handlers, drops open
keep-alive connections and joins every handler thread.

Run it stand-alone for a demo: ``python -m tests.support.openai_test_server --port 8000``.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tests.support.bounded_log import DEFAULT_WINDOW, BoundedLog
from tests.support.openai_test_handler import _HTTPServer
from tests.support.openai_test_requests import (
    DEFAULT_MODEL,
    Fault,
    RecordedRequest,
    default_answer,
    user_text,
)


class OpenAITestServer:
    """A fake OpenAI-compatible endpoint on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        port: int = 0,
        model: str = DEFAULT_MODEL,
        fail_first_n: tuple[int, int] | tuple[int, int, float | str | None] | None = None,
        plan: Sequence[Fault | None] = (),
        faults_by_text: Mapping[str, Fault] | None = None,
        status_for_text: Mapping[str, int] | None = None,
        delay: float = 0.0,
        api_key: str | None = None,
        answer_fn: Callable[[Any], str | None] = default_answer,
        echo_authorization: bool = False,
        structured_outputs: bool = True,
        window: int = DEFAULT_WINDOW,
        schema_answer_fn: Callable[[Any, Any], str] | None = None,
    ) -> None:
        self.port = port
        self.echo_authorization = echo_authorization
        self.structured_outputs = structured_outputs
        self.model = model
        self.delay = delay
        self.api_key = api_key
        self.answer_fn = answer_fn
        # (schema, body) -> the text of a structured answer, cut at max_tokens like a free one: e.g. JSON padded
        # with whitespace, as `vllm serve` writes it without disable_any_whitespace
        self.schema_answer_fn = schema_answer_fn
        call_plan: dict[int, Fault] = {i: f for i, f in enumerate(plan) if f is not None}
        if fail_first_n is not None:
            status, n, *rest = fail_first_n
            retry_after = rest[0] if rest else None
            for i in range(n):
                call_plan.setdefault(i, Fault.http(status, retry_after=retry_after))
        self._call_plan = call_plan
        self._text_faults: list[list[Any]] = [[s, f, 0] for s, f in (faults_by_text or {}).items()]
        self._text_faults += [[s, Fault.http(code), 0] for s, code in (status_for_text or {}).items()]
        self.requests: BoundedLog = BoundedLog(window)  # recent requests; .total counts all
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> OpenAITestServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self.port = self._httpd.server_address[1]
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="fake-openai-serve",
        )
        self._serve_thread.start()
        return self

    def close(self, join_timeout: float = 5.0) -> None:
        """Stop accepting, release hanging handlers, drop open connections, join every thread."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(join_timeout)
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:  # idle keep-alive handlers are blocked reading: wake them
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + join_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:<port>`` (the API lives under ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:<port>/v1``."""
        return f"{self.url}/v1"

    @property
    def alive_threads(self) -> int:
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    # -- bookkeeping -------------------------------------------------------------------------------

    def requests_for(self, substring: str) -> list[RecordedRequest]:
        """The recorded requests whose user text contains ``substring``, in arrival order."""
        with self._lock:
            return [r for r in self.requests if substring in r.text]

    def _arrive(self, path: str, headers: dict[str, str], body: Any, raw: bytes) -> RecordedRequest:
        lowered = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            record = RecordedRequest(
                call=self.requests.total,
                path=path,
                headers=lowered,
                body=body,
                raw=raw,
                arrived=time.monotonic(),
                text=user_text(body),
            )
            self.requests.append(record)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return record

    def _leave(self, record: RecordedRequest) -> None:
        """The request is answered (called before its bytes leave, so a client that holds the answer never
        sees it still in flight) or abandoned; once per request."""
        with self._lock:
            if record.left:
                return
            record.left = True
            if record.finished is None:
                record.finished = time.monotonic()
            self.in_flight -= 1

    def _fault_for(self, record: RecordedRequest) -> Fault | None:
        with self._lock:
            for rule in self._text_faults:
                substring, fault, used = rule
                if substring in record.text and (fault.times is None or used < fault.times):
                    rule[2] += 1
                    return fault
            return self._call_plan.get(record.call)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible chat-completions server (demo/tests).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds every answer takes")
    parser.add_argument("--api_key", default=None, help="require 'Authorization: Bearer <key>'")
    args = parser.parse_args(argv)
    server = OpenAITestServer(port=args.port, model=args.model, delay=args.delay, api_key=args.api_key).start()
    print(f"fake OpenAI endpoint at {server.base_url} (model {args.model!r}); Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
