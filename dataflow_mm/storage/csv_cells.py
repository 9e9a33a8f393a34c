"""CSV cells that round-trip exactly: a cell that is not a plain string is written as JSON.

``3``, ``true``, ``1e-12`` and ``[1, 2]`` are written as JSON; a string that would read as JSON is
written as a JSON string (``"3"`` stays the text 3); every cell that parses as strict JSON is read
back as that value (NaN/Infinity cells stay text) and an empty cell is a null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage import jsoncodec

_JSON_STARTS = frozenset('-0123456789[{"tfn')


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity cells stay text


def _csv_json(text: str) -> Any:
    """The JSON value of a CSV cell; ValueError when it is not strict JSON."""
    if text[:1] not in _JSON_STARTS:
        raise ValueError("not JSON")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError as exc:
        raise ValueError("too deep") from exc


def _reads_as_json(text: str) -> bool:
    try:
        _csv_json(text)
    except ValueError:
        return False
    return True


def encode_csv_cell(value: Any) -> Any:
    """A CSV cell that reads back as ``value`` (see the module docstring); None/NaN give an empty cell."""
    if isinstance(value, str):
        return jsoncodec.dumps(value).decode("utf-8") if value == "" or _reads_as_json(value) else value
    plain = jsoncodec.to_plain(value)
    return None if plain is None else jsoncodec.dumps(plain).decode("utf-8")


def decode_csv_cell(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return _csv_json(value)
        except ValueError:
            return value
    return value


def check_csv_header(path: Path) -> None:
    import csv

    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise StorageError(f"Cannot parse CSV '{path}': {exc}") from exc
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise StorageError(f"CSV '{path}' has duplicate column names: {duplicates}")
