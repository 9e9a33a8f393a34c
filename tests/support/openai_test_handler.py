"""The fake OpenAI server's HTTP side (``testing.openai_test_server``): the threaded server that tracks
its handler threads and connections, and the handler that answers, records and fails on plan."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tests.support.openai_test_requests import (
    Fault,
    RecordedRequest,
    answer_for_schema,
    default_answer,
    gzip_zeros,
)

if TYPE_CHECKING:
    from tests.support.openai_test_server import OpenAITestServer


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
                if owner.schema_answer_fn is not None:
                    answer = owner.schema_answer_fn(schema, record.body)
                else:
                    answer = json.dumps(answer_for_schema(schema, default_answer(record.body)))
            else:
                answer = owner.answer_fn(record.body)  # None is sent as "content": null
            finish_reason = "stop" if answer is not None else "length"
            limit = record.body.get("max_tokens")
            over = answer is not None and isinstance(limit, int) and len(answer.split()) > limit
            if over and (not schema_wanted or owner.schema_answer_fn is not None):
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
            body = fault.message.encode("utf-8") if fault.message is not None else None
            self._send_raw(200, body or b'{"id": "chatcmpl-x", "choices": [{"message": {"content": "trunc', record)
        elif fault.kind == "trickle":
            self._trickle(owner, fault, record)
        elif fault.kind == "gzip_bomb":
            self._send_raw(200, gzip_zeros(fault.size), record, {"Content-Encoding": "gzip"})
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
            self.server.owner._leave(record)
        self.wfile.write(payload)
        self.wfile.flush()
