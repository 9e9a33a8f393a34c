"""Parquet columns that read back exactly: what Arrow cannot hold as typed is stored as JSON text.

A column with ``1`` in one row and ``"text"`` in another, ints mixed with floats, or ints beyond 64
bits is written as JSON strings and named in the file's metadata (``JSON_COLUMNS_KEY``); reading
decodes those columns again, so every value comes back as it was.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from dataflow_mm.storage import jsoncodec

JSON_COLUMNS_KEY = b"dataflow_mm.json_columns"


def _has_int(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_int(v) for v in value)
    if isinstance(value, dict):
        return any(_has_int(v) for v in value.values())
    return isinstance(value, int) and not isinstance(value, bool)


def _has_float_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_floating(arrow_type):
        return True
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _has_float_type(arrow_type.value_type)
    if pa.types.is_struct(arrow_type):
        return any(_has_float_type(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    return False


def _arrow_column(series: pd.Series) -> tuple[Any, bool]:
    """An Arrow array for ``series`` and whether it had to be stored as JSON text to stay exact."""
    import pyarrow as pa

    if series.dtype != object:
        return pa.Array.from_pandas(series), False
    values = series.tolist()
    try:
        array = pa.array(values, from_pandas=True)
        exact = not (_has_float_type(array.type) and any(_has_int(v) for v in values))
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        exact = False
    if exact:
        return array, False
    texts = [None if (p := jsoncodec.to_plain(v)) is None else jsoncodec.dumps(p).decode("utf-8") for v in values]
    return pa.array(texts, type=pa.string()), True


def frame_to_arrow(frame: pd.DataFrame) -> Any:
    """A pyarrow Table for ``frame``; columns Arrow cannot hold exactly become JSON text (named in metadata)."""
    import pyarrow as pa

    arrays, json_columns = [], []
    for name in frame.columns:
        array, as_json = _arrow_column(frame[name])
        arrays.append(array)
        if as_json:
            json_columns.append(str(name))
    table = pa.Table.from_arrays(arrays, names=[str(c) for c in frame.columns])
    if json_columns:
        table = table.replace_schema_metadata({JSON_COLUMNS_KEY: json.dumps(json_columns).encode("utf-8")})
    return table


def parquet_json_columns(parquet_file: Any) -> set[str]:
    metadata = parquet_file.schema_arrow.metadata or {}
    raw = metadata.get(JSON_COLUMNS_KEY)
    return set(json.loads(raw)) if raw else set()


def batch_frame(batch: Any, json_columns: set[str]) -> pd.DataFrame:
    """A record batch as an object frame of plain Python values (lists stay lists, ints stay ints)."""
    data = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        values = column.to_pylist()
        if name in json_columns:
            values = [None if v is None else json.loads(v) for v in values]
        data[name] = values
    return pd.DataFrame(data, dtype=object) if data else pd.DataFrame(index=range(batch.num_rows))
