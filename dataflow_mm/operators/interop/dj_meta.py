"""Data-Juicer's row metadata for Img-Diff boxes: ``__dj__meta__.__dj__bbox__`` (pixel ``[cx, cy, w, h]``).

Data-Juicer's Img-Diff operators keep a pair's difference boxes inside the row's meta dict, not in a
column of their own. A table "uses Data-Juicer's format" when it has a ``__dj__meta__`` column; the
Img-Diff box writers then also put their boxes there (``with_dj_bboxes``), so a Data-Juicer
pipeline can read the rows back. This is the one place that writes that key.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

DJ_META_KEY = "__dj__meta__"
DJ_BBOX_KEY = "__dj__bbox__"


def uses_dj_format(frame: pd.DataFrame) -> bool:
    """The table carries Data-Juicer's meta column."""
    return DJ_META_KEY in frame.columns


def _meta_dict(meta: Any) -> dict[str, Any]:
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
    return _meta_dict(meta).get(DJ_BBOX_KEY)


def with_dj_bboxes(meta: Any, boxes: list[list[float | int]] | None) -> dict[str, Any]:
    """A copy of the row's meta cell (dict, JSON text or empty) with ``__dj__bbox__`` set to ``boxes``."""
    out = _meta_dict(meta)
    out[DJ_BBOX_KEY] = boxes
    return out
