"""Reading and writing the table formats a step file may have: jsonl, json, csv, parquet.

Reading streams in chunks. JSONL is read line by line so one malformed or non-UTF-8 line is
rejected (with its line number and reason) instead of failing the whole table. Values keep
their types (object columns), so an integer stays an integer through every step.

Values round-trip exactly in every format (floats bit for bit, ints beyond 2**53, booleans,
nulls, nested lists and dicts):

* JSON/JSONL are written by ``jsoncodec`` (exact floats, no ``\\/``) and read by the stdlib.
* CSV cells hold text, so a cell that is not a plain string is written as JSON (``3``, ``true``,
  ``1e-12``, ``[1, 2]``), a string that would read as JSON is written as a JSON string
  (``"3"`` stays the text 3), and every cell that parses as JSON is read back as that value.
  A cell of a user's CSV that is valid JSON (``3``, ``true``) is therefore read as a number or
  boolean; an empty cell is a null.
* Parquet columns get Arrow types; a column Arrow cannot hold exactly (``1`` in one row and
  ``"text"`` in another, ints mixed with floats, ints beyond 64 bits) is stored as JSON text
  and named in the file's metadata (``dataflow_mm.json_columns``), so it reads back as it was.

Writing goes through the one atomic writer (``storage.atomic``): a temp file in the target
folder, renamed into place on success.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage.arrow_exact import batch_frame, parquet_json_columns
from dataflow_mm.storage.chunks import Chunk, records_frame
from dataflow_mm.storage.csv_cells import check_csv_header, decode_csv_cell
from dataflow_mm.storage.jsonl_reading import (
    MAX_JSON_DEPTH,
    TooDeepError,
    iter_jsonl,
    load_json_text,
)
from dataflow_mm.storage.table_types import check_readable, table_type_of

DEFAULT_CHUNK_SIZE = 512


def _iter_frame(frame: pd.DataFrame, chunk_size: int) -> Iterator[Chunk]:
    for start in range(0, len(frame), chunk_size):
        yield Chunk(frame.iloc[start : start + chunk_size].reset_index(drop=True))


def iter_table(
    path: str | os.PathLike, table_type: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[Chunk]:
    """Stream a table in chunks of at most ``chunk_size`` rows (an empty file yields nothing)."""
    path = Path(path)
    check_readable(path)
    table_type = table_type or table_type_of(path)
    if path.stat().st_size == 0:
        return
    if table_type == "source":  # shards elsewhere (object storage, datasets folders, WebDataset)
        from dataflow_mm.storage.source_tables import iter_source

        yield from iter_source(path, chunk_size)
    elif table_type == "jsonl":
        yield from iter_jsonl(path, chunk_size)
    elif table_type == "csv":
        check_csv_header(path)
        try:
            for frame in pd.read_csv(path, chunksize=chunk_size, dtype=object, keep_default_na=False, na_values=[""]):
                yield Chunk(frame.reset_index(drop=True).map(decode_csv_cell))
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise StorageError(f"Cannot parse CSV '{path}': {exc}") from exc
    elif table_type == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet_file = pq.ParquetFile(path)
            json_columns = parquet_json_columns(parquet_file)
            for batch in parquet_file.iter_batches(batch_size=chunk_size):
                yield Chunk(batch_frame(batch, json_columns))
        except pa.ArrowException as exc:
            raise StorageError(f"Cannot read Parquet '{path}' (corrupt or not Parquet): {exc}") from exc
    else:
        try:
            data = load_json_text(path.read_text(encoding="utf-8-sig"), max_depth=MAX_JSON_DEPTH + 1)  # + the list
        except (json.JSONDecodeError, UnicodeDecodeError, TooDeepError) as exc:
            raise StorageError(f"Cannot parse JSON '{path}': {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise StorageError(f"JSON table '{path}' must be a list of objects")
        yield from _iter_frame(records_frame(data), chunk_size)


def read_table(path: str | os.PathLike, table_type: str | None = None) -> Chunk:
    """The whole table at once (rows plus rejects)."""
    frames, rejects = [], []
    for chunk in iter_table(path, table_type, chunk_size=1 << 30):
        frames.append(chunk.frame)
        rejects.extend(chunk.rejects)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Chunk(frame, rejects)


def has_records(path: str | os.PathLike, table_type: str | None = None) -> bool:
    """True when the table holds at least one row or one unreadable record (i.e. it is not empty)."""
    return any(len(c.frame) or c.rejects for c in iter_table(path, table_type, chunk_size=1))


def peek_columns(path: str | os.PathLike, table_type: str | None = None, rows: int = 200) -> list[str]:
    """Column names seen in the first ``rows`` rows (the union, for JSONL), in first-seen order."""
    for chunk in iter_table(path, table_type, chunk_size=rows):
        return [str(c) for c in chunk.frame.columns]
    return []


def find_columns(path: str | os.PathLike, wanted: list[str], table_type: str | None = None) -> list[str]:
    """Which of ``wanted`` are columns of some row anywhere in the table (reads until all are found)."""
    found: set[str] = set()
    for chunk in iter_table(path, table_type):
        found.update(str(c) for c in chunk.frame.columns if str(c) in wanted)
        if len(found) == len(set(wanted)):
            break
    return [key for key in wanted if key in found]
