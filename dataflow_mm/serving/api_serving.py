"""A VLM served behind an OpenAI-compatible chat-completions endpoint.

Works with ``vllm serve``, SGLang, Ollama (``/v1``), LM Studio and cloud providers that speak
``POST {base}/chat/completions``. Every request of a ``chat`` call is sent by a bounded pool of
workers (at most ``max_workers`` HTTP requests in flight per backend instance) and the answers
come back in input order.

Images (``{"type": "image", "image": path | PIL.Image | bytes}``) are sent as base64 ``data:`` URLs of
the pixels the in-process backends see, downscaled to ``max_image_side`` (``serving.api_images``).

Faults (see ``dataflow_mm.common.retry.RetryPolicy``): a request is retried, with exponential backoff and jitter, on
HTTP 408, HTTP 429, HTTP 5xx, connection errors (refused, reset, closed without an answer), timeouts
and a 2xx answer whose body is not valid JSON (a truncated or garbled body from an overloaded server
or proxy: treated like a server error). As in the OpenAI SDK, the server's wait replaces the
computed backoff: ``retry-after-ms`` (milliseconds) first, else ``Retry-After`` (seconds or
HTTP-date). It is honoured even above ``backoff_max`` up to ``retry_after_max`` (default
``MAX_RETRY_AFTER_S`` = 120 s); a longer wait ends the row's attempts at once, with the server's wait in the
message, rather than retrying before the server is ready. Any other 4xx (400, 401, 403, 404, 413, 422, ...) and a
well-formed answer without text (no ``choices``, null content) are final at once: sending the
same request again would get the same answer.

Row outcomes (``dataflow_mm.common.errors.row_outcome``): a request that got no answer after its retries
(connection, timeout, 408/429/5xx, a wait over ``retry_after_max``) or a refused configuration (401, 403,
404) leaves its row *pending*, ``error = "ServingUnavailableError: <cause> after <n> attempts: <message>"``:
a rerun sends it again. A request the server refuses as wrong (400, 413, 422, an empty or oversized
answer) *fails* its row, ``"ServingError: <cause> (not retryable): <message>"``. ``text`` is None either way.

Stopping early (``serving.breaker``): a refused configuration (401/403/404 before any answer, or one same
400/422 naming a parameter of the request for the first requests) raises ``ServingConfigError`` with the
server's message; a server that stopped answering (``max_consecutive_failures`` requests in a row without
an answer, or none answered for ``max_unanswered_s`` seconds) raises ``RunStoppedError``. Either way no
further request is sent, retries waiting are woken, and every chat call in flight raises instead of
returning answers.

Bounds (``serving.http_reply``): ``timeout`` is the time for a whole request, reply included (a
server trickling bytes cannot stretch it), and a reply larger than ``max_response_bytes`` once
decompressed (default 4 MiB) is a row error, ``reply too large``, not retried.

Secrets: a key holding a control character is refused before any request; every message that
reaches a row or the log is scrubbed of the key and of any ``Authorization``/``Bearer`` value
(``dataflow_mm.common.secrets``).
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import (
    RowError,
    ServingConfigError,
    ServingError,
    ServingUnavailableError,
    UnsupportedArgumentError,
    UserError,
    row_error_text,
)
from dataflow_mm.common.logger import get_logger
from dataflow_mm.common.retry import MAX_RETRY_AFTER_S, RetryPolicy
from dataflow_mm.common.secrets import has_control_characters, register_secret, scrub
from dataflow_mm.common.server_text import clean_server_text
from dataflow_mm.serving import structured
from dataflow_mm.serving.api_images import (
    _MIME,
    image_format_name,
    image_part,
)
from dataflow_mm.serving.api_reply import AttemptFailure, post_once
from dataflow_mm.serving.base import Completion, Conversation, SamplingParams, VLMServing
from dataflow_mm.serving.breaker import (
    ANSWERED,
    CONFIG,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_MAX_UNANSWERED_S,
    REFUSED,
    TRANSIENT,
    ServingBreaker,
)
from dataflow_mm.serving.http_reply import (
    ACCEPT_ENCODING,
    DEFAULT_MAX_RESPONSE_BYTES,
)

logger = get_logger("serving.api")

# How a server that does not support structured outputs refuses a request carrying response_format.
_SCHEMA_REJECTED = ("HTTP 400", "HTTP 422")


# --------------------------------------------------------------------------------------------------
# Request building
# --------------------------------------------------------------------------------------------------


def chat_completions_url(api_url: str) -> str:
    """The full chat-completions URL from a base (``http://h:8000/v1``) or the full URL itself."""
    url = api_url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"api_url must be an http(s) URL like http://127.0.0.1:8000/v1, got {api_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path or "/v1") + "/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# --------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------

# Where the key is read from when no variable is named: DataFlow-MM's, then OpenAI's.
DEFAULT_API_KEY_ENVS = ("DF_API_KEY", "OPENAI_API_KEY")


def _default_key_env() -> str:
    """The first of ``DEFAULT_API_KEY_ENVS`` that is set (the first one when none is)."""
    return next((name for name in DEFAULT_API_KEY_ENVS if os.environ.get(name)), DEFAULT_API_KEY_ENVS[0])


class APIVLMServing_openai(VLMServing):
    """An OpenAI-compatible chat-completions endpoint behind the common serving interface."""

    backend_name = "api"
    concurrent_chunks = 2  # the next chunk's requests wait on the slots while this chunk's last ones finish

    def __init__(
        self,
        api_url: str = "https://api.openai.com/v1",
        model_name: str = "",
        api_key: str | None = None,
        api_key_env: str | None = None,
        max_workers: int = 8,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        retry_after_max: float = MAX_RETRY_AFTER_S,
        max_image_side: int | None = 1024,
        image_format: str = "JPEG",
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_tokens: int = 512,
        seed: int | None = None,
        extra_body: dict[str, Any] | None = None,
        sampling: SamplingParams | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
        key_name_of_api_key: str | None = None,
        image_io: Any = None,
        send_request_stream: bool = False,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        max_unanswered_s: float = DEFAULT_MAX_UNANSWERED_S,
    ) -> None:
        """``key_name_of_api_key``, ``image_io`` and ``send_request_stream`` are DataFlow-MM's names: the first is
        ``api_key_env``; ``image_io`` (generated images) must be None; a streamed answer equals the whole one,
        so ``send_request_stream`` only changes how DataFlow-MM reads it and is accepted either way.
        Without ``api_key_env``, the key is read from ``DF_API_KEY`` (DataFlow-MM's), else ``OPENAI_API_KEY``.
        ``max_consecutive_failures`` / ``max_unanswered_s`` stop the run when the server stopped answering
        (``serving.breaker``; 0 turns a rule off). ``sleep`` (default: a wait the breaker can cut short)
        is the wait between retries."""
        super().__init__(
            sampling or SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        )
        if image_io is not None:
            raise UnsupportedArgumentError(
                f"APIVLMServing_openai(image_io={image_io!r}): image output is not supported by dataflow-mm "
                "(it asks for text answers); pass image_io=None"
            )
        if key_name_of_api_key and api_key_env and key_name_of_api_key != api_key_env:
            raise UserError(
                f"api_key_env={api_key_env!r} and key_name_of_api_key={key_name_of_api_key!r} name different "
                "variables; pass one of them"
            )
        api_key_env = api_key_env or key_name_of_api_key or _default_key_env()
        if not model_name:
            raise UserError("model_name is required for the api backend (the name the endpoint serves)")
        if max_workers < 1:
            raise UserError(f"max_workers must be >= 1, got {max_workers}")
        if timeout <= 0:
            raise UserError(f"timeout must be > 0 seconds, got {timeout}")
        if max_response_bytes < 1:
            raise UserError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        if max_consecutive_failures < 0:
            raise UserError(f"max_consecutive_failures must be >= 0 (0: never stop), got {max_consecutive_failures}")
        if not 0 <= max_unanswered_s < float("inf"):
            raise UserError(f"max_unanswered_s must be a number >= 0 (0: never stop), got {max_unanswered_s}")
        if max_image_side is not None and max_image_side < 1:
            raise UserError(f"max_image_side must be >= 1 or None, got {max_image_side}")
        fmt = image_format_name(image_format)
        if fmt is None:
            raise UserError(f"image_format must be one of {sorted(_MIME)}, got {image_format!r}")
        self.api_url = api_url
        self.endpoint = chat_completions_url(api_url)
        self.model_name = model_name
        self.api_key_env = api_key_env
        # The key is kept private and never logged, described or repr'd.
        self._api_key = api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        if self._api_key and has_control_characters(self._api_key):
            source = f"${api_key_env}" if api_key is None else "api_key"
            raise UserError(
                f"the API key ({source}) holds a control character (a trailing newline or '\\r'?): "
                "fix the value; it is not shown, and no request was sent"
            )
        register_secret(self._api_key)
        self.max_response_bytes = int(max_response_bytes)
        self.max_workers = int(max_workers)
        self.timeout = float(timeout)
        self.max_image_side = max_image_side
        self.image_format = fmt
        self.extra_body = dict(extra_body or {})
        self.retry = RetryPolicy(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            retry_after_max=retry_after_max,
            rng=rng or random.Random(),
        )
        self._sleep = sleep
        self._breaker = ServingBreaker(
            f"the server at {self._public_url()} (model {model_name!r})", max_consecutive_failures, max_unanswered_s
        )
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self._client: Any = None
        self.stats.extra.update({"http_requests": 0, "retry_causes": {}})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self._public_url()!r}, model_name={self.model_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (e.g. to ship to Ray workers): the lock, the slots and the open client stay behind."""
        state = self.__dict__.copy()
        for name in ("_lock", "_slots", "_client"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        register_secret(self._api_key)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self._client = None

    # -- interface -------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.model_name

    def describe(self) -> dict[str, Any]:
        """What shapes the answers (it feeds the resume fingerprint): endpoint, model, sampling, image
        encoding, extra body. Never the key; not the run-time knobs (workers, timeout, retries)."""
        info = super().describe()
        info.update(
            {
                "api_url": self._public_url(),
                "max_image_side": self.max_image_side,
                "image_format": self.image_format,
            }
        )
        if self.extra_body:
            info["extra_body"] = self.extra_body
        return info

    @property
    def breaker(self) -> ServingBreaker:
        """The stop switch every request of this serving reports to (``serving.breaker``)."""
        return self._breaker

    def cleanup(self) -> None:
        """Close the HTTP client and reset the breaker: the next call starts as a new run."""
        self._breaker.reset()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        """Every request's completion (answered, failed, or pending when the breaker stopped the run meanwhile);
        the breaker's stop error when it had stopped before, or when every request is refused."""
        self._get_client()  # fail fast (missing httpx) before any worker starts
        self._breaker.check()
        self._breaker.call_started()
        try:
            workers = min(self.max_workers, len(conversations))
            if workers <= 1:
                answers = [self._answer_row(i, c, sampling) for i, c in enumerate(conversations)]
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfmm-api") as pool:
                    answers = list(
                        pool.map(
                            self._answer_row,
                            range(len(conversations)),
                            conversations,
                            [sampling] * len(conversations),
                        )
                    )
        finally:
            self._breaker.call_ended()
        if isinstance(self._breaker.error, ServingConfigError):
            self._breaker.check()  # every request is refused: no row of this call is a result
        # Stopped while this call was in flight (the server went away): its answers are kept and its other
        # rows are pending; the next call raises, so the run stops after this chunk is written.
        return answers

    # -- internals -------------------------------------------------------------------------------

    def _public_url(self) -> str:
        """The endpoint without userinfo or query (either may carry a credential)."""
        parts = urlsplit(self.endpoint)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                httpx = require("httpx", extra="api")
                # No keep-alive: each request opens its connection, whose socket its Deadline can cut.
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(max_connections=self.max_workers, max_keepalive_connections=0),
                    follow_redirects=False,
                )
            return self._client

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
            "User-Agent": "dataflow-mm",
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _convert_part(self, part: Any) -> Any:
        return image_part(part, self.max_image_side, self.image_format)

    def _payload(self, conversation: Conversation, sampling: SamplingParams) -> dict[str, Any]:
        messages = []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, list):
                message = {**message, "content": [self._convert_part(p) for p in content]}
            messages.append(message)
        payload: dict[str, Any] = {
            "model": self.model_name,
            "messages": messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        payload.update(sampling.extras())  # top_k, repetition_penalty, ...: vLLM/SGLang servers' extensions
        if sampling.response_schema is not None:
            payload["response_format"] = structured.openai_response_format(sampling.response_schema)
        payload.update(self.extra_body)
        return payload

    def _count(self, key: str, cause: str | None = None) -> None:
        with self._lock:
            if key == "retried":
                self.stats.retried += 1
                causes = self.stats.extra.setdefault("retry_causes", {})
                causes[cause] = causes.get(cause, 0) + 1
            else:
                self.stats.extra[key] = self.stats.extra.get(key, 0) + 1

    def _answer_row(self, index: int, conversation: Conversation, sampling: SamplingParams) -> Completion:
        try:
            return self._answer(index, conversation, sampling)
        except Exception as exc:  # a bug must not sink the other rows; it is logged with its traceback
            logger.warning("api request %d failed unexpectedly", index, exc_info=True)
            error = clean_server_text(f"{type(exc).__name__}: {exc}", 1000)
            return Completion(text=None, error=row_error_text(ServingError(error)))

    def _answer(self, index: int, conversation: Conversation, sampling: SamplingParams) -> Completion:
        try:
            payload = self._payload(conversation, sampling)
            body = json.dumps(payload).encode("utf-8")
        except RowError as exc:
            return Completion(text=None, error=row_error_text(exc))
        except (OSError, ValueError) as exc:
            return Completion(text=None, error=row_error_text(ServingError(f"could not encode image: {exc}")))
        attempts = 0
        while True:
            attempts += 1
            result = self._attempt(body)
            if result is None:  # the breaker tripped: this request is not sent
                return _NOT_SENT
            if isinstance(result, Completion):
                self._breaker.request_done(ANSWERED)
                return result
            if result.retryable:
                self._breaker.attempt_unanswered(result.cause, scrub(result.message))
            asked = self.retry.server_wait(result.retry_after, result.retry_after_ms)
            if result.retryable and self.retry.too_long(asked):
                error = scrub(
                    row_error_text(
                        ServingUnavailableError(
                            f"{result.cause} on attempt {attempts}: the server asks to wait {asked:g} s, over the "
                            f"{self.retry.retry_after_max:g} s limit (retry_after_max): {result.message}"
                        )
                    )
                )
                logger.warning("api request %d failed: %s", index, error)
                self._breaker.request_done(TRANSIENT, result.cause, scrub(result.message))
                return Completion(text=None, error=error)
            if not self.retry.should_retry(attempts, result.retryable):
                error = result.error_text(attempts)
                message = scrub(result.message)
                if sampling.response_schema is not None and result.cause in _SCHEMA_REJECTED:
                    error = structured.rejected_error(f"{result.cause}: {result.message}")
                    message = scrub(error.split(": ", 1)[1])
                logger.warning("api request %d failed: %s", index, error)
                names_parameter = any(name in result.message for name in payload if name != "messages")
                self._breaker.request_done(_outcome_of(result), result.cause, message, names_parameter)
                return Completion(text=None, error=error)
            wait = self.retry.delay(attempts, result.retry_after, result.retry_after_ms)
            self._count("retried", result.cause)
            logger.debug(
                "api request %d: %s (%s); retry %d/%d in %.2fs",
                index,
                result.cause,
                scrub(result.message),
                attempts,
                self.retry.max_retries,
                wait,
            )
            if wait > 0:
                self._pause(wait)

    def _pause(self, seconds: float) -> None:
        """Wait before a retry; the default wait ends at once when the breaker trips."""
        if self._sleep is None:
            self._breaker.wait(seconds)
        else:
            self._sleep(seconds)

    def _attempt(self, body: bytes) -> Completion | AttemptFailure | None:
        """One HTTP attempt; None, and nothing sent, once the breaker has tripped."""
        client = self._get_client()
        if self._breaker.stopped:
            return None
        with self._slots:
            if self._breaker.stopped:  # tripped while this request waited for a slot
                return None
            self._breaker.attempt_started()
            self._count("http_requests")
            return post_once(client, self.endpoint, body, self._headers(), self.timeout, self.max_response_bytes)


# A request the breaker kept from being sent: its row stays pending.
_NOT_SENT = Completion(text=None, error=row_error_text(ServingUnavailableError("not sent: the run stopped")))


def _outcome_of(failure: AttemptFailure) -> str:
    """The breaker's name for a request's final failure."""
    if failure.retryable:
        return TRANSIENT
    return CONFIG if failure.pending else REFUSED
