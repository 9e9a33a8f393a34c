"""A VLM served behind an OpenAI-compatible chat-completions endpoint.

Works with ``vllm serve``, SGLang, Ollama (``/v1``), LM Studio and cloud providers that speak
``POST {base}/chat/completions``. Every request of a ``chat`` call is sent by a bounded pool of
workers (at most ``max_workers`` HTTP requests in flight per backend instance) and the answers
come back in input order.

Images (``{"type": "image", "image": path | PIL.Image | bytes}``) are loaded with ``load_image``
(so the endpoint sees the same pixels as the in-process backends), downscaled so their longest side
is at most ``max_image_side`` and sent as base64 ``data:`` URLs with the right MIME type
(``image_format``, JPEG by default; PNG for sources that had an alpha channel). ``image_url``
parts (and ``image`` parts holding a string) whose URL already starts with ``http://``,
``https://`` or ``data:`` pass through untouched (not downscaled).

Faults (see ``RetryPolicy``): a request is retried, with exponential backoff and jitter, on
HTTP 429, HTTP 5xx, connection errors (refused, reset, closed without an answer), timeouts and a
2xx answer whose body is not valid JSON (a truncated or garbled body from an overloaded server or
proxy: treated like a server error). ``Retry-After`` (seconds or HTTP-date) replaces the computed
backoff, capped by ``backoff_max``. Any other 4xx (400, 401, 403, 404, 413, 422, ...) and a
well-formed answer without text (no ``choices``, null content) are final at once: sending the
same request again would get the same answer. After the last attempt the row gets
``error = "ServingError: <cause> after <n> attempts: <server message>"`` and ``text`` None; the
run goes on.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

from dataflow_mm.deps import require
from dataflow_mm.errors import RowError, ServingError, UserError, row_error_text
from dataflow_mm.logger import get_logger
from dataflow_mm.serving import structured
from dataflow_mm.serving.base import Completion, Conversation, SamplingParams, VLMServing

logger = get_logger("serving.api")

PASS_THROUGH_PREFIXES = ("http://", "https://", "data:")
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_MAX_MESSAGE_CHARS = 300
# How a server that does not support structured outputs refuses a request carrying response_format.
_SCHEMA_REJECTED = ("HTTP 400", "HTTP 422")


# --------------------------------------------------------------------------------------------------
# Retry policy (pure: clock, sleep and randomness are injected)
# --------------------------------------------------------------------------------------------------


def is_retryable_status(status: int) -> bool:
    """429 and 5xx are worth another try; every other non-2xx status is final."""
    return status == 429 or 500 <= status <= 599


@dataclass
class RetryPolicy:
    """When to retry and how long to wait.

    ``delay(n)`` is the wait before retry ``n`` (1 = first retry): ``backoff_base * 2**(n-1)``
    capped at ``backoff_max``, then jittered uniformly into ``[(1 - jitter) * d, d]`` so that
    many workers failing together do not come back together. A ``Retry-After`` header value
    (delta-seconds or HTTP-date) replaces that computed delay, capped at ``backoff_max``.
    """

    max_retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def should_retry(self, attempts_made: int, retryable: bool) -> bool:
        """True when a failed attempt number ``attempts_made`` (1-based) may be followed by another."""
        return retryable and attempts_made <= self.max_retries

    def backoff(self, retry_number: int) -> float:
        """The jittered exponential delay before retry ``retry_number`` (1-based)."""
        exponent = min(max(retry_number - 1, 0), 62)
        ceiling = min(self.backoff_base * (2.0**exponent), self.backoff_max)
        return ceiling * (1.0 - self.jitter * self.rng.random())

    def parse_retry_after(self, value: str | None) -> float | None:
        """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); None if absent/bad."""
        if value is None:
            return None
        value = value.strip()
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when is None:
                return None
            seconds = when.timestamp() - self.clock()
        if seconds != seconds:  # NaN
            return None
        return max(seconds, 0.0)

    def delay(self, retry_number: int, retry_after: str | None = None) -> float:
        """How long to sleep before retry ``retry_number``: ``Retry-After`` if given, else the backoff."""
        honoured = self.parse_retry_after(retry_after)
        if honoured is not None:
            return min(honoured, self.backoff_max)
        return self.backoff(retry_number)


@dataclass
class AttemptFailure:
    """Why one HTTP attempt did not give an answer."""

    cause: str  # "HTTP 500", "timeout", "connection error", "malformed JSON response", "empty answer"
    message: str
    retryable: bool
    retry_after: str | None = None

    def error_text(self, attempts: int) -> str:
        if self.retryable:  # retries exhausted
            where = f" after {attempts} attempt{'s' if attempts != 1 else ''}"
        else:
            where = " (not retryable)" if attempts <= 1 else f" on attempt {attempts} (not retryable)"
        return row_error_text(ServingError(f"{self.cause}{where}: {self.message}"))


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


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def encode_image(image: Image.Image, max_side: int | None = 1024, fmt: str = "JPEG", lossless: bool = False) -> str:
    """A ``data:`` URL of ``image`` downscaled (aspect kept) so its longest side is at most ``max_side``.

    ``lossless`` (or an image that still has an alpha channel) switches a JPEG target to PNG.
    """
    fmt = fmt.upper()
    fmt = "JPEG" if fmt == "JPG" else fmt
    if fmt not in _MIME:
        raise ValueError(f"image_format must be one of {sorted(_MIME)}, got {fmt!r}")
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if _has_alpha(image):
        fmt = "PNG" if fmt == "JPEG" else fmt
        if image.mode != "RGBA":
            image = image.convert("RGBA")
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if lossless and fmt == "JPEG":
        fmt = "PNG"
    buffer = io.BytesIO()
    save_kwargs: dict[str, Any] = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    image.save(buffer, format=fmt, **save_kwargs)
    return f"data:{_MIME[fmt]};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _source_has_alpha(source: Any) -> bool:
    """Whether a path/bytes/PIL source has an alpha channel (header only; False when unreadable)."""
    if isinstance(source, Image.Image):
        return _has_alpha(source)
    try:
        fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
        with Image.open(fp) as image:
            return _has_alpha(image)
    except Exception:  # load_image reports the real problem
        return False


def _load(source: Any) -> tuple[Image.Image, bool]:
    """The image as the in-process backends see it (``load_image``: RGB, EXIF-oriented, alpha over
    white) and whether the source had alpha (then it is sent as PNG: such images are mostly
    graphics, where JPEG artefacts hurt)."""
    from dataflow_mm.imaging.loading import load_image

    image = load_image(source)
    return image, _source_has_alpha(source)


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
    message = " ".join(message.split())
    return message[:_MAX_MESSAGE_CHARS] + ("..." if len(message) > _MAX_MESSAGE_CHARS else "")


def _answer_text(data: Any) -> tuple[str | None, str]:
    """The answer text of a chat-completions body, or None and why not."""
    if not isinstance(data, dict):
        return None, f"response body is a {type(data).__name__}, not an object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        error = data.get("error")
        error = error.get("message") if isinstance(error, dict) else error
        return None, "response has no choices" + (f" (error: {str(error)[:_MAX_MESSAGE_CHARS]})" if error else "")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with content parts
        texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        content = "".join(texts) if texts else None
    if not isinstance(content, str):
        return None, f"choice has no text content (finish_reason={choice.get('finish_reason')!r})"
    return content, ""


# --------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------


class APIVLMServing_openai(VLMServing):
    """An OpenAI-compatible chat-completions endpoint behind the common serving interface."""

    backend_name = "api"

    def __init__(
        self,
        api_url: str,
        model_name: str,
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_workers: int = 8,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_image_side: int | None = 1024,
        image_format: str = "JPEG",
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_tokens: int = 512,
        seed: int | None = None,
        extra_body: dict[str, Any] | None = None,
        sampling: SamplingParams | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            sampling or SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        )
        if not model_name:
            raise UserError("model_name is required for the api backend (the name the endpoint serves)")
        if max_workers < 1:
            raise UserError(f"max_workers must be >= 1, got {max_workers}")
        if timeout <= 0:
            raise UserError(f"timeout must be > 0 seconds, got {timeout}")
        if max_image_side is not None and max_image_side < 1:
            raise UserError(f"max_image_side must be >= 1 or None, got {max_image_side}")
        fmt = image_format.upper()
        fmt = "JPEG" if fmt == "JPG" else fmt
        if fmt not in _MIME:
            raise UserError(f"image_format must be one of {sorted(_MIME)}, got {image_format!r}")
        self.api_url = api_url
        self.endpoint = chat_completions_url(api_url)
        self.model_name = model_name
        self.api_key_env = api_key_env
        # The key is kept private and never logged, described or repr'd.
        self._api_key = api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        self.max_workers = int(max_workers)
        self.timeout = float(timeout)
        self.max_image_side = max_image_side
        self.image_format = fmt
        self.extra_body = dict(extra_body or {})
        self.retry = RetryPolicy(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            rng=rng or random.Random(),
        )
        self._sleep = sleep
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

    def cleanup(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        self._get_client()  # fail fast (missing httpx) before any worker starts
        workers = min(self.max_workers, len(conversations))
        if workers <= 1:
            return [self._answer_row(i, c, sampling) for i, c in enumerate(conversations)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfmm-api") as pool:
            return list(
                pool.map(
                    self._answer_row,
                    range(len(conversations)),
                    conversations,
                    [sampling] * len(conversations),
                )
            )

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
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(max_connections=self.max_workers, max_keepalive_connections=self.max_workers),
                    follow_redirects=False,
                )
            return self._client

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "dataflow-mm",
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _convert_part(self, part: Any) -> Any:
        if not isinstance(part, dict):
            return part
        kind = part.get("type")
        if kind == "image":
            source = part.get("image")
            if isinstance(source, str) and source.startswith(PASS_THROUGH_PREFIXES):
                return {"type": "image_url", "image_url": {"url": source}}
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if isinstance(url, str) and url.startswith(PASS_THROUGH_PREFIXES):
                return part
            source = url[len("file://") :] if isinstance(url, str) and url.startswith("file://") else url
        else:
            return part
        image, had_alpha = _load(source)
        data_url = encode_image(image, self.max_image_side, self.image_format, lossless=had_alpha)
        return {"type": "image_url", "image_url": {"url": data_url}}

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
            return Completion(text=None, error=row_error_text(ServingError(f"{type(exc).__name__}: {exc}")))

    def _answer(self, index: int, conversation: Conversation, sampling: SamplingParams) -> Completion:
        try:
            body = json.dumps(self._payload(conversation, sampling)).encode("utf-8")
        except RowError as exc:
            return Completion(text=None, error=row_error_text(exc))
        except (OSError, ValueError) as exc:
            return Completion(text=None, error=row_error_text(ServingError(f"could not encode image: {exc}")))
        attempts = 0
        while True:
            attempts += 1
            result = self._attempt(body)
            if isinstance(result, Completion):
                return result
            if not self.retry.should_retry(attempts, result.retryable):
                error = result.error_text(attempts)
                if sampling.response_schema is not None and result.cause in _SCHEMA_REJECTED:
                    error = structured.rejected_error(f"{result.cause}: {result.message}")
                logger.warning("api request %d failed: %s", index, error)
                return Completion(text=None, error=error)
            wait = self.retry.delay(attempts, result.retry_after)
            self._count("retried", result.cause)
            logger.debug(
                "api request %d: %s (%s); retry %d/%d in %.2fs",
                index,
                result.cause,
                result.message,
                attempts,
                self.retry.max_retries,
                wait,
            )
            if wait > 0:
                self._sleep(wait)

    def _attempt(self, body: bytes) -> Completion | AttemptFailure:
        httpx = require("httpx", extra="api")
        client = self._get_client()
        with self._slots:
            self._count("http_requests")
            try:
                response = client.post(self.endpoint, content=body, headers=self._headers())
            except httpx.TimeoutException as exc:
                return AttemptFailure("timeout", f"no answer within {self.timeout:g}s ({type(exc).__name__})", True)
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                return AttemptFailure("invalid request", f"{type(exc).__name__}: {exc}", False)
            except httpx.TransportError as exc:
                return AttemptFailure("connection error", f"{type(exc).__name__}: {exc}", True)
        status = response.status_code
        if not 200 <= status <= 299:
            return AttemptFailure(
                f"HTTP {status}",
                _server_message(response),
                is_retryable_status(status),
                response.headers.get("retry-after"),
            )
        try:
            data = json.loads(response.content)
        except ValueError:
            snippet = " ".join(response.text[:80].split())
            return AttemptFailure(
                "malformed JSON response", f"HTTP {status}, {len(response.content)} bytes: {snippet!r}", True
            )
        text, why = _answer_text(data)
        if text is None:
            return AttemptFailure("empty answer", why, False)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
            completion_tokens=completion_tokens if isinstance(completion_tokens, int) else None,
        )
