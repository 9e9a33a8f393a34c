"""A list that keeps only its most recent entries, for test helpers that record what they saw.

Test helpers record every request so tests can inspect them; in a long benchmark an unbounded
record grows with the run and makes the benchmark measure the helper, not the framework. A
``BoundedLog`` is an ordinary ``list`` (indexing, slicing, ``== []`` all work) that trims its
oldest entries once they weigh more than twice ``window``, so it always keeps at least the last
``window`` worth and never more than ``2 * window`` (trimming in blocks keeps appends O(1)).
Each entry weighs 1, or ``size(entry)``: a log of batched calls bounds the requests it holds, not
the calls. ``total`` counts every entry ever appended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEFAULT_WINDOW = 10_000  # far more than any test records; a benchmark's memory stays flat


class BoundedLog(list):
    """The most recent appended entries (weighing at least ``window``, at most ``2 * window``); ``total`` counts all."""

    def __init__(self, window: int = DEFAULT_WINDOW, size: Callable[[Any], int] | None = None) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.total = 0
        self._size = size  # None: every entry weighs 1 (kept picklable: no lambda)
        self._weights: list[int] = []
        self._held = 0

    def append(self, item: Any) -> None:
        weight = self._size(item) if self._size is not None else 1
        super().append(item)
        self._weights.append(weight)
        self._held += weight
        self.total += 1
        if self._held > 2 * self.window and len(self) > 1:
            drop = 0
            while len(self) - drop > 1 and self._held - self._weights[drop] >= self.window:
                self._held -= self._weights[drop]
                drop += 1
            del self[:drop]
            del self._weights[:drop]
