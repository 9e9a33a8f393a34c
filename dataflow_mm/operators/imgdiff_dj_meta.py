"""Data-Juicer's row metadata for Img-Diff boxes: ``__dj__meta__.__dj__bbox__`` (pixel ``[cx, cy, w, h]``).

Data-Juicer's Img-Diff operators keep a pair's difference boxes inside the row's meta dict, not in a
column of their own. A table "uses Data-Juicer's format" when it has a ``__dj__meta__`` column; the
Img-Diff box writers then also put their boxes there (``with_dj_bboxes``), so a Data-Juicer
pipeline can read the rows back. This is the one place that writes that key.

A meta cell that is neither a dict (nor JSON text of one) nor empty is the user's data in a shape
this code does not know: it is never replaced by a dict; the row keeps it and gets a ``DJMetaError``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from dataflow_mm.errors import RowError

DJ_META_KEY = "__dj__meta__"
DJ_BBOX_KEY = "__dj__bbox__"


class DJMetaError(RowError):
    """A row's ``__dj__meta__`` is not a dict: kept as it is, the row is not processed."""


def meta_problem(meta: Any) -> DJMetaError | None:
    """The error for a meta cell that holds something other than a dict, JSON text of one, or nothing."""
    if meta is None or isinstance(meta, dict) or (isinstance(meta, float) and math.isnan(meta)):
        return None
    if isinstance(meta, str):
        if not meta.strip():
            return None
        try:
            if isinstance(json.loads(meta), dict):
                return None
        except ValueError:
            pass
    shown = repr(meta)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return DJMetaError(
        f"{DJ_META_KEY} must be a dict (Data-Juicer's per-sample meta), not {type(meta).__name__} {shown}: "
        "the row keeps its value and is left out"
    )


def uses_dj_format(frame: pd.DataFrame) -> bool:
    """The table carries Data-Juicer's meta column."""
    return DJ_META_KEY in frame.columns


def meta_as_dict(meta: Any) -> dict[str, Any]:
    """A copy of a meta cell as a dict (JSON text parsed); {} for an empty cell (see ``meta_problem``)."""
    if isinstance(meta, dict):
        return dict(meta)
    if isinstance(meta, str) and meta.strip():
        try:
            loaded = json.loads(meta)
        except ValueError:
            return {}
        return dict(loaded) if isinstance(loaded, dict) else {}
    return {}


def dj_bboxes(meta: Any) -> Any:
    """The boxes a row's meta cell holds (None when it holds none)."""
    return meta_as_dict(meta).get(DJ_BBOX_KEY)


def with_dj_bboxes(meta: Any, boxes: list[list[float | int]] | None) -> dict[str, Any]:
    """A copy of the row's meta cell (dict, JSON text or empty) with ``__dj__bbox__`` set to ``boxes``."""
    out = meta_as_dict(meta)
    out[DJ_BBOX_KEY] = boxes
    return out
