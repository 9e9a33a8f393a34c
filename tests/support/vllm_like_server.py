"""The fake OpenAI server, refusing requests the way vLLM 0.32's OpenAI-compatible server does.

``VLLMLikeServer`` is an ``OpenAITestServer`` (same answers, faults and records) that first checks
each chat request as ``vllm.entrypoints.openai.api_server`` does, and refuses it with vLLM's exact
error body (``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``):

* a ``model`` it does not serve: HTTP 404, ``NotFoundError``, ``param: "model"``,
  "The model `<name>` does not exist. Valid aliases: <served>." (``serve/engine/serving.py``);
* a ``temperature`` outside [0, 2] or a ``top_p`` outside (0, 1]: HTTP 400, ``BadRequestError``, with the
  parameter's name (``SamplingParams._verify_args``).

Refused requests are recorded like the others (``record.fault`` is ``"model"`` or the parameter), so a
test counts at the server how many requests a client sent before it stopped.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any

from tests.support.openai_test_handler import _Handler, _HTTPServer
from tests.support.openai_test_requests import RecordedRequest
from tests.support.openai_test_server import OpenAITestServer


def vllm_error_body(message: str, err_type: str, code: int, param: str | None = None) -> dict[str, Any]:
    """vLLM 0.32's ``ErrorResponse`` as JSON (``create_error_response``)."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def vllm_refusal(body: Any, served: str) -> tuple[int, dict[str, Any], str] | None:
    """``(status, body, what)`` of vLLM's refusal of a chat request ``body``, or None when vLLM takes it."""
    if not isinstance(body, dict):
        return None
    model = body.get("model")
    if model and model != served:
        message = f"The model `{model}` does not exist. Valid aliases: {served}."
        return 404, vllm_error_body(message, "NotFoundError", 404, "model"), "model"
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not 0.0 <= temperature <= 2.0:
        message = (
            f"temperature must be non-negative, got {float(temperature)}."
            if temperature < 0
            else f"temperature must be in [0, 2], got {float(temperature)}."
        )
        return 400, vllm_error_body(message, "BadRequestError", 400, "temperature"), "temperature"
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)) and not 0.0 < top_p <= 1.0:
        message = f"top_p must be in (0, 1], got {float(top_p)}."
        return 400, vllm_error_body(message, "BadRequestError", 400, "top_p"), "top_p"
    return None


class _VLLMLikeHandler(_Handler):
    def _serve(self, owner: OpenAITestServer, record: RecordedRequest) -> None:
        refusal = vllm_refusal(record.body, owner.model)
        if refusal is None:
            super()._serve(owner, record)
            return
        status, body, what = refusal
        record.fault = what
        self._send_json(status, body, record)


class _VLLMLikeHTTPServer(_HTTPServer):
    def __init__(self, owner: OpenAITestServer) -> None:
        self.owner = owner
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", owner.port), _VLLMLikeHandler)


class VLLMLikeServer(OpenAITestServer):
    """An ``OpenAITestServer`` that refuses a wrong model or parameter as vLLM does (module docstring)."""

    def start(self) -> VLLMLikeServer:
        """As ``OpenAITestServer.start``, with vLLM's request checks in front of the answers."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _VLLMLikeHTTPServer(self)
        self.port = self._httpd.server_address[1]
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="fake-vllm-serve"
        )
        self._serve_thread.start()
        return self
