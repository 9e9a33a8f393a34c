"""When a serving stops sending requests: the server refuses the configuration, or it stopped answering.

Every request's outcome is reported to the ``ServingBreaker`` its serving holds (one per serving, shared
by all its threads and by every chunk in flight). It trips, at most once, with the error the run stops on:

* ``ServingConfigError`` (exit 2, one line, the server's message) when every request would fail the same
  way: a request refused with 401, 403 or 404 (key, permission, model name or URL) before any request of
  this serving was answered, or ``CONFIG_REPEATS`` such refusals in a row later (a key revoked mid-run); or
  the first ``CONFIG_REPEATS`` requests all refused with one same 400/422 message that names a parameter
  of the request (``temperature``, ``response_format``...: a refused parameter). A message that names
  none (e.g. "the image cannot be decoded", for a table whose first rows are broken) is about the rows.
* ``RunStoppedError`` (exit 3: the rows not answered stay pending, rerun to continue) when the server
  stopped answering: ``max_consecutive_failures`` requests in a row failed for want of an answer
  (connection refused or reset, timeout, 408/429/5xx, each after its retries), or no request was
  answered for ``max_unanswered_s`` seconds while requests were being tried.

Once tripped it stays tripped until ``reset()`` (the serving's ``cleanup``): requests not yet sent are
never sent, and every chat call that was in flight raises the stop error instead of returning, so no
answer or failure of a stopped run is written as a row's result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dataflow_mm.common.errors import DataflowMMError, RunStoppedError, ServingConfigError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.common.secrets import scrub

logger = get_logger("serving.breaker")

DEFAULT_MAX_CONSECUTIVE_FAILURES = 10
DEFAULT_MAX_UNANSWERED_S = 300.0
CONFIG_REPEATS = 3  # refusals in a row that stop the run once some request was answered (and same-400 probes)

# What one request came to (its final outcome, after its retries).
ANSWERED = "answered"  # the server answered it (a Completion)
TRANSIENT = "transient"  # no answer: connection, timeout, 408/429/5xx after the retries
CONFIG = "config"  # 401/403/404: the server refuses the configuration, not this request
REFUSED = "refused"  # another 4xx, an empty or oversized answer: this request is wrong


class ServingBreaker:
    """Thread-safe stop switch of one serving (see the module docstring).

    ``where`` names the server and model in the stop messages; ``clock`` is injectable for tests.
    ``max_consecutive_failures`` / ``max_unanswered_s`` of 0 turn that rule off.
    """

    def __init__(
        self,
        where: str,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
        max_unanswered_s: float = DEFAULT_MAX_UNANSWERED_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_consecutive_failures < 0:
            raise ValueError(f"max_consecutive_failures must be >= 0, got {max_consecutive_failures}")
        if not 0 <= max_unanswered_s < float("inf"):
            raise ValueError(f"max_unanswered_s must be >= 0, got {max_unanswered_s}")
        self.where = where
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.max_unanswered_s = float(max_unanswered_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._event = threading.Event()
        self.reset()

    def reset(self) -> None:
        """Forget every outcome and any trip: the next call starts as a new run."""
        with self._lock:
            self._error: DataflowMMError | None = None
            self._event.clear()
            self._answered_once = False
            self._transient_run = 0
            self._config_run = 0
            self._first_refusals: list[str] = []  # the first requests' 400/422 messages, while all refused
            self._unanswered_since: float | None = None
            self._active_calls = 0

    # -- pickling (a serving is shipped to Ray workers): a fresh breaker on the other side ----------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "max_consecutive_failures": self.max_consecutive_failures,
            "max_unanswered_s": self.max_unanswered_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # -- state -----------------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    @property
    def error(self) -> DataflowMMError | None:
        """Why the breaker tripped (``ServingConfigError`` or ``RunStoppedError``); None while it has not."""
        return self._error

    def check(self) -> None:
        """Raise the stop error (a fresh instance: several threads may raise it at once) once tripped."""
        error = self._error
        if error is not None:
            raise type(error)(*error.args)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the breaker trips first (True when it did)."""
        return self._event.wait(seconds)

    def call_started(self) -> None:
        """A chat call begins; the first one after none were active restarts the unanswered clock."""
        with self._lock:
            if self._active_calls == 0:
                self._unanswered_since = None
            self._active_calls += 1

    def call_ended(self) -> None:
        with self._lock:
            self._active_calls = max(0, self._active_calls - 1)

    # -- outcomes ----------------------------------------------------------------------------------

    def attempt_started(self) -> None:
        """An HTTP attempt is about to be sent: the unanswered clock runs from the first one since an answer."""
        with self._lock:
            if self._unanswered_since is None:
                self._unanswered_since = self._clock()

    def attempt_unanswered(self, cause: str, message: str) -> None:
        """An attempt got no answer (it may be retried): stop when nothing was answered for too long."""
        with self._lock:
            since = self._unanswered_since
            if not self.max_unanswered_s or since is None:
                return
            silent = self._clock() - since
            if silent < self.max_unanswered_s:
                return
            self._trip(
                RunStoppedError(
                    f"{self.where} answered no request for {silent:.0f} s (--api_max_unanswered_s "
                    f"{self.max_unanswered_s:g}); last: {cause}: {message}. The rows not answered stay pending: "
                    "rerun the same command when the server is back"
                )
            )

    def request_done(self, outcome: str, cause: str = "", message: str = "", names_parameter: bool = False) -> None:
        """Record one request's final outcome (``ANSWERED``, ``TRANSIENT``, ``CONFIG`` or ``REFUSED``);
        ``names_parameter``: a refusal whose message names a parameter the request sent."""
        with self._lock:
            if outcome == ANSWERED:
                self._answered_once = True
                self._transient_run = self._config_run = 0
                self._unanswered_since = None
                self._first_refusals = []
                return
            if outcome == TRANSIENT:
                self._transient_run += 1
                if self.max_consecutive_failures and self._transient_run >= self.max_consecutive_failures:
                    self._trip(
                        RunStoppedError(
                            f"{self.where} stopped answering: {self._transient_run} requests in a row failed after "
                            f"their retries (--api_max_consecutive_failures {self.max_consecutive_failures}); last: "
                            f"{cause}: {message}. The rows not answered stay pending: rerun the same command when "
                            "the server is back"
                        )
                    )
                return
            # The server answered (with a refusal): it is up.
            self._transient_run = 0
            self._unanswered_since = None
            if outcome == CONFIG:
                self._config_run += 1
                if not self._answered_once or self._config_run >= CONFIG_REPEATS:
                    self._trip(ServingConfigError(f"{self.where} refuses the requests: {cause}: {message}"))
                return
            self._config_run = 0
            if self._answered_once or not names_parameter or not cause.startswith(("HTTP 400", "HTTP 422")):
                self._first_refusals = []
                self._answered_once = True  # a request-specific refusal: the configuration works
                return
            self._first_refusals.append(f"{cause}: {message}")
            if len(self._first_refusals) >= CONFIG_REPEATS and len(set(self._first_refusals)) == 1:
                self._trip(
                    ServingConfigError(
                        f"{self.where} refused each of the first {len(self._first_refusals)} requests the same way "
                        f"(a parameter it does not accept?): {self._first_refusals[0]}"
                    )
                )
            elif len(set(self._first_refusals)) > 1:
                self._answered_once = True  # refusals that differ are about the requests, not the setup

    def _trip(self, error: DataflowMMError) -> None:
        """Called with the lock held: the first trip wins."""
        if self._error is not None:
            return
        error = type(error)(" ".join(scrub(str(error)).split()))  # one line, no key
        self._error = error
        self._event.set()
        logger.error("%s", error)
