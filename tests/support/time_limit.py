"""A wall-clock limit for code that could hang (a quadratic parse, a download never cut off)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread once ``seconds`` have passed in the block (SIGALRM), so that
    the test fails instead of running for minutes or hours; ``what`` says what was still going on."""

    def _expired(*_: object) -> None:
        raise TimeoutError(f"{what} after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
