"""When a network request is tried again, and how long to wait first (pure: clock, sleep and randomness injected).

Shared by the API backend (``serving.api_serving``) and the image downloads of the storage layer
(``storage.downloads``): both retry HTTP 408, 429 and 5xx with jittered exponential backoff and
honour the server's ``retry-after-ms`` / ``Retry-After`` up to ``retry_after_max``.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dataflow_mm.common.errors import ConfigError

MAX_RETRY_AFTER_S = 120.0


def is_retryable_status(status: int) -> bool:
    """408 (request timeout), 429 and 5xx are worth another try; every other non-2xx status is final."""
    return status in (408, 429) or 500 <= status <= 599


def is_configuration_status(status: int) -> bool:
    """401, 403 and 404 from a chat endpoint refuse the configuration (key, permission, model name or URL),
    not one request: every request would get the same answer."""
    return status in (401, 403, 404)


@dataclass
class RetryPolicy:
    """When to retry and how long to wait.

    ``delay(n)`` is the wait before retry ``n`` (1 = first retry): ``backoff_base * 2**(n-1)``
    capped at ``backoff_max``, then jittered uniformly into ``[(1 - jitter) * d, d]`` so that
    many workers failing together do not come back together. The server's wait (``retry-after-ms``,
    else ``Retry-After`` as delta-seconds or HTTP-date) replaces that computed delay, uncapped by
    ``backoff_max``; a wait above ``retry_after_max`` is not waited for (``too_long``: the row fails).
    """

    max_retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = MAX_RETRY_AFTER_S
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, not {self.max_retries!r}")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.retry_after_max < 0:
            raise ConfigError("backoff_base, backoff_max and retry_after_max must be numbers >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigError(f"jitter must be a number from 0 to 1, not {self.jitter!r}")

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

    def server_wait(self, retry_after: str | None = None, retry_after_ms: str | None = None) -> float | None:
        """Seconds the server asked for: ``retry-after-ms`` when valid, else ``Retry-After``; None if neither."""
        if retry_after_ms is not None:
            try:
                millis = float(retry_after_ms.strip())
            except ValueError:
                millis = float("nan")
            if millis == millis and millis != float("inf"):
                return max(millis, 0.0) / 1000.0
        return self.parse_retry_after(retry_after)

    def too_long(self, wait: float | None) -> bool:
        """True when the server's wait exceeds ``retry_after_max`` (the row fails instead of waiting)."""
        return wait is not None and wait > self.retry_after_max

    def delay(self, retry_number: int, retry_after: str | None = None, retry_after_ms: str | None = None) -> float:
        """How long to sleep before retry ``retry_number``: the server's wait if given (at most
        ``retry_after_max``), else the jittered backoff."""
        honoured = self.server_wait(retry_after, retry_after_ms)
        if honoured is not None:
            return min(honoured, self.retry_after_max)
        return self.backoff(retry_number)
