"""A step's rows counted by outcome (done / failed / pending) from its row errors by class.

The classes come from ``errors.row_outcome``: a row whose error class is transient is pending, any
other error is a permanent failure, a row without error is done. Counted from the ``row_errors`` a
step records anyway (its result, its manifest's stats), so manifests written before outcomes existed
are counted the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataflow_mm.common.errors import PENDING_ERROR_CLASSES, ROW_DONE, ROW_FAILED, ROW_PENDING


def row_counts(rows_out: int, row_errors: Mapping[str, int]) -> dict[str, int]:
    """``{"done": .., "failed": .., "pending": ..}`` for a step's output rows."""
    pending = sum(n for cls, n in row_errors.items() if cls in PENDING_ERROR_CLASSES)
    failed = sum(n for cls, n in row_errors.items() if cls not in PENDING_ERROR_CLASSES)
    return {ROW_DONE: max(rows_out - pending - failed, 0), ROW_FAILED: failed, ROW_PENDING: pending}


def stats_counts(stats: Mapping[str, Any]) -> dict[str, int]:
    """:func:`row_counts` of a manifest's stats (a step result's ``to_dict``)."""
    return row_counts(int(stats.get("rows_out", 0)), stats.get("row_errors", {}) or {})
