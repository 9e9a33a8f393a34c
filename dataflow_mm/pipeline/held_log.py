"""A script's set-up log lines, held until its run log starts.

A shipped script builds its serving before the pipeline compiles, and building it may already log
(the backend chosen, a tiny-model fallback warning). Holding those lines means that a user error
found by the compile (a missing input file) prints its one line alone, and that the run's log file
(``run_log``) starts with them, before any other line, instead of missing them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dataflow_mm.common.errors import UserError
from dataflow_mm.common.logger import get_logger

_lock = threading.Lock()
_holding: list[tuple[_Buffer, list[logging.Handler]]] = []  # at most one: the running script's


class _Buffer(logging.Handler):
    """Keeps every record it is given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def holding_setup_log() -> Iterator[None]:
    """Hold the package's log lines until ``release_held_log`` (the run log starting) or the block's end.

    At the block's end, held lines are printed, except after a ``UserError``: that error's one line is
    then all the user sees (the lines were about a run that never started).
    """
    root = get_logger()
    buffer = _Buffer()
    with _lock:
        handlers = list(root.handlers)
        for handler in handlers:
            root.removeHandler(handler)
        root.addHandler(buffer)
        _holding.append((buffer, handlers))
    try:
        yield
    except UserError:
        _release(replay=False)
        raise
    finally:
        _release(replay=True)


def release_held_log(also: logging.Handler | None = None) -> None:
    """Print the held lines (and hand them to ``also``, e.g. the run log file); stop holding."""
    _release(replay=True, also=also)


def _release(replay: bool, also: logging.Handler | None = None) -> None:
    with _lock:
        if not _holding:
            return
        buffer, handlers = _holding.pop()
        root = get_logger()
        root.removeHandler(buffer)
        for handler in handlers:
            root.addHandler(handler)
    if not replay:
        return
    for record in buffer.records:
        for handler in [*handlers, *([also] if also is not None else [])]:
            if record.levelno >= handler.level:
                handler.handle(record)
