"""Every run's log, also as a file under the cache path: ``{cache_path}/logs/{start time}.log``.

On a cluster the terminal that started a run is often gone; the cache folder is where its
user looks. The file gets every package log line of the run (same format as stderr, secrets
scrubbed by the same ``ScrubbingFilter``) and, at the end, the run summary.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from dataflow_mm.common.logger import LOG_FORMAT, get_logger
from dataflow_mm.common.secrets import ScrubbingFilter, scrub
from dataflow_mm.pipeline.held_log import release_held_log

LOGS_DIR_NAME = "logs"


def run_log_path(cache_path: str | os.PathLike, started: datetime) -> Path:
    """``{cache_path}/logs/YYYYmmdd-HHMMSS-ffffff.log`` (UTC start time; sorts in run order)."""
    return Path(cache_path) / LOGS_DIR_NAME / f"{started.astimezone(UTC):%Y%m%d-%H%M%S-%f}.log"


class RunLog:
    """The open log file of one run (``path``); ``write`` adds text that is not a log record."""

    def __init__(self, path: Path, handler: logging.FileHandler) -> None:
        self.path = path
        self._handler = handler

    def write(self, text: str) -> None:
        """Append ``text`` (scrubbed) as it is, e.g. the summary printed on stdout."""
        self._handler.acquire()
        try:
            self._handler.stream.write(scrub(text).rstrip("\n") + "\n")
            self._handler.flush()
        finally:
            self._handler.release()


@contextmanager
def run_log(cache_path: str | os.PathLike) -> Iterator[RunLog | None]:
    """Copy the package log into a new file under ``cache_path`` for the duration of the block.

    When that file cannot be created (a read-only ``logs/`` folder in a writable cache, ``logs`` being a
    file), the run goes on without it: one warning on stderr says so, and the block gets None.
    """
    path = run_log_path(cache_path, datetime.now(UTC))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("x", encoding="utf-8").close()  # a run never reuses another run's file
        # Appending: a library that closes every logging handler (vLLM's engine shutdown) makes the
        # handler reopen the file on its next record, which must continue it, not fail or truncate it.
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        get_logger("run_log").warning(
            "cannot write the run log in %s (%s): this run has no log file, only this terminal's output",
            path.parent,
            exc.strerror or type(exc).__name__,
        )
        yield None
        return
    handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(ScrubbingFilter())
    root = get_logger()
    release_held_log(also=handler)  # the script's set-up lines (e.g. a fallback warning) open the file
    root.addHandler(handler)
    try:
        yield RunLog(path, handler)
    finally:
        root.removeHandler(handler)
        handler.close()
