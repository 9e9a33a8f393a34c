"""A list that keeps only its most recent entries, for test helpers that record what they saw.

Test helpers record every request so tests can inspect them; in a long benchmark an unbounded
record grows with the run and makes the benchmark measure the helper, not the framework. A
``BoundedLog`` is an ordinary ``list`` (indexing, slicing, ``== []`` all work) that trims its
oldest entries once it holds more than twice ``window``, so it always keeps at least the last
``window`` entries and never more than ``2 * window`` (trimming in blocks keeps appends O(1)).
``total`` counts every entry ever appended.
"""

from __future__ import annotations

from typing import Any

DEFAULT_WINDOW = 10_000  # far more than any test records; a benchmark's memory stays flat


class BoundedLog(list):
    """The most recent appended entries (at least ``window``, at most ``2 * window``); ``total`` counts all."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.total = 0

    def append(self, item: Any) -> None:
        super().append(item)
        self.total += 1
        if len(self) > 2 * self.window:
            del self[: len(self) - self.window]
