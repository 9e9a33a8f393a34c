"""One HTTP attempt at a chat completion: send it within its deadline, read the reply, say what came of it.

The answer is a ``Completion``; anything else an ``AttemptFailure`` saying whether another attempt may
help (the retry loop and its policy are the backend's, ``serving.api_serving``). ``timeout`` bounds the
whole request, reply included, and a reply above ``max_response_bytes`` is refused
(``serving.http_reply``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dataflow_mm.common.deadline import Deadline
from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import ServingError, ServingUnavailableError, row_error_text
from dataflow_mm.common.retry import is_configuration_status, is_retryable_status
from dataflow_mm.common.secrets import scrub, scrub_secrets
from dataflow_mm.common.server_text import clean_server_text
from dataflow_mm.serving.base import Completion
from dataflow_mm.serving.http_reply import ReplyTooLargeError, read_reply

_MAX_MESSAGE_CHARS = 300  # of the server's own message
_MAX_FAILURE_CHARS = 1000  # of a failure's whole message


@dataclass
class AttemptFailure:
    """Why one HTTP attempt did not give an answer."""

    cause: str  # "HTTP 500", "timeout", "connection error", "malformed JSON response", "empty answer"
    message: str
    retryable: bool
    retry_after: str | None = None
    retry_after_ms: str | None = None
    status: int | None = None  # the HTTP status, when the server answered with one

    @property
    def pending(self) -> bool:
        """True when the row is not at fault: no answer (retries exhausted) or a refused configuration
        (401/403/404). Such a row is *pending* (``ServingUnavailableError``): a rerun sends it again."""
        return self.retryable or (self.status is not None and is_configuration_status(self.status))

    def __post_init__(self) -> None:
        # Whatever the message quotes (a server's body, an exception about its reply) is scrubbed of the key
        # before anything cuts it, and its control characters escaped (dataflow_mm.common.server_text).
        self.message = clean_server_text(self.message, _MAX_FAILURE_CHARS)

    def error_text(self, attempts: int) -> str:
        if self.retryable:  # retries exhausted
            where = f" after {attempts} attempt{'s' if attempts != 1 else ''}"
        else:
            where = " (not retryable)" if attempts <= 1 else f" on attempt {attempts} (not retryable)"
        kind = ServingUnavailableError if self.pending else ServingError
        return scrub(row_error_text(kind(f"{self.cause}{where}: {self.message}")))


def _server_message(response: Any) -> str:
    """The error message a server put in its body (OpenAI, vLLM, FastAPI shapes), else the raw text."""
    text = ""
    try:
        text = response.text
        data = json.loads(text)
    except Exception:
        data = None
    message: Any = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            message = err.get("message") or err.get("msg")
        elif isinstance(err, str):
            message = err
        message = message or data.get("message") or data.get("detail")
    if message is None:
        message = text.strip() or (getattr(response, "reason_phrase", "") or "(empty body)")
    message = message if isinstance(message, str) else json.dumps(message)
    return clean_server_text(message, _MAX_MESSAGE_CHARS)  # scrubbed whole, then cut


def _answer_text(data: Any) -> tuple[str | None, str]:
    """The answer text of a chat-completions body, or None and why not."""
    if not isinstance(data, dict):
        return None, f"response body is a {type(data).__name__}, not an object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        error = data.get("error")
        error = error.get("message") if isinstance(error, dict) else error
        error_text = clean_server_text(str(error), _MAX_MESSAGE_CHARS) if error else ""
        return None, "response has no choices" + (f" (error: {error_text})" if error else "")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with content parts
        texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        content = "".join(texts) if texts else None
    if not isinstance(content, str):
        return None, f"choice has no text content (finish_reason={choice.get('finish_reason')!r})"
    return content, ""


def completion_of(response: Any) -> Completion | AttemptFailure:
    """The Completion in an HTTP ``response`` (status, body), or the AttemptFailure that says why there is none."""
    status = response.status_code
    if not 200 <= status <= 299:
        return AttemptFailure(
            f"HTTP {status}",
            _server_message(response),
            is_retryable_status(status),
            response.headers.get("retry-after"),
            response.headers.get("retry-after-ms"),
            status,
        )
    try:
        data = json.loads(response.content)
    except ValueError:
        snippet = clean_server_text(response.text, 80)  # scrubbed whole, then cut
        return AttemptFailure(
            "malformed JSON response", f"HTTP {status}, {len(response.content)} bytes: '{snippet}'", True
        )
    text, why = _answer_text(data)
    if text is None:
        return AttemptFailure("empty answer", why, False)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    choice = data["choices"][0] if isinstance(data["choices"][0], dict) else {}
    finish_reason = choice.get("finish_reason")
    return Completion(
        text=scrub_secrets(text),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
        completion_tokens=completion_tokens if isinstance(completion_tokens, int) else None,
    )


def post_once(
    client: Any, endpoint: str, body: bytes, headers: dict[str, str], timeout: float, max_response_bytes: int
) -> Completion | AttemptFailure:
    """POST ``body`` to ``endpoint`` once with an ``httpx.Client``: the Completion, or why there is none."""
    httpx = require("httpx", extra="api")
    deadline = Deadline(timeout)  # the whole request, not each read (serving.http_reply)
    try:
        request = client.build_request(
            "POST", endpoint, content=body, headers=headers, extensions={"trace": deadline.trace}
        )
        with deadline:
            streamed = client.send(request, stream=True)
            try:
                response = read_reply(streamed, max_response_bytes)
            finally:
                streamed.close()
    except ReplyTooLargeError as exc:
        return AttemptFailure("reply too large", str(exc), False)
    except httpx.TimeoutException as exc:
        return AttemptFailure("timeout", f"no answer within {timeout:g}s ({type(exc).__name__})", True)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return AttemptFailure("invalid request", f"{type(exc).__name__}: {exc}", False)
    except httpx.TransportError as exc:
        if deadline.expired:
            return AttemptFailure("timeout", f"no complete answer within {timeout:g}s", True)
        return AttemptFailure("connection error", f"{type(exc).__name__}: {exc}", True)
    return completion_of(response)
