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
without structured outputs does (``structured_outputs=False``).

Requests are recorded (``server.requests``: body, headers, arrival/finish times, what was
answered; the last ``window`` requests at least, so a long benchmark's memory stays flat;
``server.requests.total`` counts them all) and ``server.max_in_flight`` is the largest number of
requests being handled at once;
``delay`` makes every answer take that long, so that concurrency is observable.

Shutdown (``close()`` / leaving the ``with`` block) releases hanging handlers, drops open
keep-alive connections and joins every handler thread.

Run it stand-alone for a demo: ``python -m dataflow_mm.testing.openai_test_server --port 8000``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dataflow_mm.testing.bounded_log import DEFAULT_WINDOW, BoundedLog

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
    def malformed(cls, times: int | None = None) -> Fault:
        return cls("malformed", times=times)

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


def _gzip_zeros(size: int) -> bytes:
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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # threads are tracked and joined by OpenAITestServer.close()
    allow_reuse_address = True

    def __init__(self, owner: OpenAITestServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", owner.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            daemon=True,
            name="fake-openai",
        )
        with self.owner._lock:
            self.owner._threads.add(thread)
            self.owner._connections.add(request)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.owner._lock:
                self.owner._connections.discard(request)
                self.owner._threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet: clients drop on purpose
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stalls)
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            owner = self.server.owner
            self._send_json(200, {"object": "list", "data": [{"id": owner.model, "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        record = owner._arrive(self.path, dict(self.headers.items()), body, raw)
        try:
            self._serve(owner, record)
        except OSError:  # the client went away (timeout on its side): nothing to answer
            pass
        finally:
            owner._leave(record)

    def _serve(self, owner: OpenAITestServer, record: RecordedRequest) -> None:
        fault = owner._fault_for(record)
        record.fault = fault.kind if fault else None
        if owner.delay > 0:
            owner._stopping.wait(owner.delay)
        if fault is not None and fault.kind == "hang":
            owner._stopping.wait(fault.seconds)
            fault = None  # then answer normally, if anyone is still listening
        if fault is None and owner.api_key is not None and record.authorization != f"Bearer {owner.api_key}":
            fault = Fault.http(401, message="Incorrect API key provided")
            record.fault = "auth"
        if not isinstance(record.body, dict):
            message = "request body is not a JSON object"
            self._send_json(400, {"error": {"message": message, "type": "invalid_request_error"}}, record)
            return
        response_format = record.body.get("response_format")
        schema_wanted = isinstance(response_format, dict) and response_format.get("type") == "json_schema"
        if fault is None and schema_wanted and not owner.structured_outputs:
            record.fault = "response_format"
            fault = Fault.http(400, message="response_format type 'json_schema' is not supported by this server")
        if fault is None:
            if schema_wanted:
                schema = (response_format.get("json_schema") or {}).get("schema")
                answer = json.dumps(answer_for_schema(schema, default_answer(record.body)))
            else:
                answer = owner.answer_fn(record.body)  # None is sent as "content": null
            finish_reason = "stop" if answer is not None else "length"
            limit = record.body.get("max_tokens")
            over = answer is not None and isinstance(limit, int) and len(answer.split()) > limit
            if over and not schema_wanted:
                answer, finish_reason = " ".join(answer.split()[:limit]), "length"  # one word, one token
            prompt_tokens = len(json.dumps(record.body.get("messages", [])).split())
            completion_tokens = len(answer.split()) if answer else 0
            self._send_json(
                200,
                {
                    "id": f"chatcmpl-{record.call}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": record.body.get("model", owner.model),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
                record,
            )
        elif fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = fault.retry_after_ms
            message = fault.message or f"planned failure with HTTP {fault.status}"
            if owner.echo_authorization:
                message += f" (you sent Authorization: {record.authorization})"
            self._send_json(
                fault.status,
                {"error": {"message": message, "type": "server_error", "code": fault.status}},
                record,
                headers,
            )
        elif fault.kind == "close":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        elif fault.kind == "malformed":
            self._send_raw(200, b'{"id": "chatcmpl-x", "choices": [{"message": {"content": "trunc', record)
        elif fault.kind == "trickle":
            self._trickle(owner, fault, record)
        elif fault.kind == "gzip_bomb":
            self._send_raw(200, _gzip_zeros(fault.size), record, {"Content-Encoding": "gzip"})
        elif fault.kind == "empty":
            self._send_json(200, {"id": "chatcmpl-x", "object": "chat.completion", "choices": []}, record)
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _trickle(self, owner: OpenAITestServer, fault: Fault, record: RecordedRequest) -> None:
        """Headers at once, then the answer one byte at a time (a bounded loop)."""
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "slow " * 40}}]}
        payload = json.dumps(answer).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.flush()
        record.status = 200
        for index in range(min(len(payload), fault.size)):
            if owner._stopping.wait(fault.seconds):
                break
            self.wfile.write(payload[index : index + 1])
            self.wfile.flush()
        self.close_connection = True

    def _send_json(
        self,
        status: int,
        data: Any,
        record: RecordedRequest | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._send_raw(status, json.dumps(data).encode("utf-8"), record, headers)

    def _send_raw(
        self,
        status: int,
        payload: bytes,
        record: RecordedRequest | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if record is not None:
            # Recorded before the bytes leave: once a client holds the answer, its record is complete.
            record.status = status
            record.finished = time.monotonic()
        self.wfile.write(payload)
        self.wfile.flush()


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
    ) -> None:
        self.port = port
        self.echo_authorization = echo_authorization
        self.structured_outputs = structured_outputs
        self.model = model
        self.delay = delay
        self.api_key = api_key
        self.answer_fn = answer_fn
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
        with self._lock:
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
