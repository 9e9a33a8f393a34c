"""The package logger: one place that decides the format of every log line."""

from __future__ import annotations

import logging
import sys

from dataflow_mm.common.secrets import ScrubbingFilter

_LOGGER_NAME = "dataflow_mm"
LOG_FORMAT = "%(asctime)s | %(levelname)-7s | %(message)s"  # stderr and the run log files


def get_logger(name: str | None = None) -> logging.Logger:
    """A child of the package logger, configured once with a plain stderr handler."""
    root = logging.getLogger(_LOGGER_NAME)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        handler.addFilter(ScrubbingFilter())  # no key reaches the log (dataflow_mm.common.secrets)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root if name is None else root.getChild(name)
