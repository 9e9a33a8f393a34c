"""Exact JSON text for table rows: floats round-trip bit for bit, no ``\\/`` escapes.

orjson writes the shortest repr that reads back to the same float (``1e-12``, ``0.123456789012345``,
``-0.0``), which pandas' ``to_json`` does not (it rounds to 10 decimals). numpy and pandas scalars,
arrays, timestamps and missing values (NaN, None, ``pd.NA``, ``NaT``) are converted on the way.
A row orjson cannot write (an int beyond 64 bits, a lone surrogate) falls back to the stdlib
encoder, which writes those exactly too. Reading stays with the stdlib (see ``formats``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    """What orjson cannot write natively, as something it can."""
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (pd.Timedelta, _dt.timedelta)):
        return pd.Timedelta(value).isoformat()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def to_plain(value: Any) -> Any:
    """``value`` as plain JSON types (dict/list/str/int/float/bool/None); NaN and inf become None."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return to_plain(_default(value))


def _stdlib_dumps(value: Any) -> bytes:
    plain = to_plain(value)
    try:
        return json.dumps(plain, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: \u-escaped, which the stdlib reads back as it was
        return json.dumps(plain, ensure_ascii=True, allow_nan=False).encode("ascii")


def dumps(value: Any) -> bytes:
    """One JSON document as UTF-8 bytes, exact for floats and big ints."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return _stdlib_dumps(value)


def frame_records(frame: pd.DataFrame) -> Iterable[dict[str, Any]]:
    """The rows of ``frame`` as dicts (column name -> cell), without copying cells."""
    names = [str(c) for c in frame.columns]
    for values in zip(*(frame[c].tolist() for c in frame.columns), strict=True):
        yield dict(zip(names, values, strict=True))


def records_jsonl(frame: pd.DataFrame) -> bytes:
    """JSON lines for the rows of ``frame`` (one object per line, each line ending in ``\\n``)."""
    return b"".join(dumps(record) + b"\n" for record in frame_records(frame))
