"""Writing tables atomically, chunk by chunk, in any of the step-file formats (and small JSON documents).

Every write goes through the one atomic writer (``storage.atomic``): a temp file in the target
folder, renamed into place on success.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage import jsoncodec
from dataflow_mm.storage.arrow_exact import frame_to_arrow
from dataflow_mm.storage.atomic import AtomicFile, CommitOnExit, write_bytes_atomic
from dataflow_mm.storage.csv_cells import encode_csv_cell
from dataflow_mm.storage.table_types import table_type_of


def _check_columns(frame: pd.DataFrame) -> None:
    if frame.columns.has_duplicates:
        dupes = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise StorageError(f"Cannot write a table with duplicate column names: {dupes}")


def frame_to_jsonl(frame: pd.DataFrame) -> bytes:
    """JSON lines (UTF-8) for a frame: exact floats, NaN as null, unicode kept as is."""
    _check_columns(frame)
    return jsoncodec.records_jsonl(frame)


class AtomicTableWriter(CommitOnExit):
    """Writes a table chunk by chunk into the atomic writer's temp file, renamed into place by ``commit``.

    JSONL, JSON and CSV stream to disk; Parquet is assembled at commit (one Arrow table).
    Used as a context manager, an exception discards the temp file and leaves the target untouched.
    """

    def __init__(self, path: str | os.PathLike, table_type: str | None = None) -> None:
        self.path = Path(path)
        self.table_type = table_type or table_type_of(self.path)
        self._file = AtomicFile(self.path)
        self._tmp = self._file.tmp
        self._held: list[pd.DataFrame] = []
        self._csv_header = True
        self._json_rows = 0
        self.rows = 0

    def append(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        if self.table_type == "jsonl":
            with self._tmp.open("ab") as handle:
                handle.write(frame_to_jsonl(frame))
        elif self.table_type == "json":
            _check_columns(frame)
            with self._tmp.open("ab") as handle:
                for record in jsoncodec.frame_records(frame):
                    handle.write(b"[\n" if self._json_rows == 0 else b",\n")
                    handle.write(jsoncodec.dumps(record))
                    self._json_rows += 1
        elif self.table_type == "csv":
            frame.map(encode_csv_cell).to_csv(self._tmp, mode="a", header=self._csv_header, index=False)
            self._csv_header = self._csv_header and frame.empty
        else:
            self._held.append(frame)

    @contextlib.contextmanager
    def raw_handle(self) -> Iterator[Any]:
        """The temp file opened for appending bytes (to join JSONL parts without parsing them)."""
        with self._tmp.open("ab") as handle:
            yield handle

    def commit(self) -> Path:
        if self.table_type == "json":
            with self._tmp.open("ab") as handle:
                handle.write(b"\n]\n" if self._json_rows else b"[]\n")
        elif self.table_type == "parquet":
            import pyarrow.parquet as pq

            frame = pd.concat(self._held, ignore_index=True) if self._held else pd.DataFrame()
            _check_columns(frame)
            pq.write_table(frame_to_arrow(frame), self._tmp)
        return self._file.commit()

    def discard(self) -> None:
        self._file.discard()


def write_table(frame: pd.DataFrame, path: str | os.PathLike, table_type: str | None = None) -> Path:
    """Write a whole table atomically."""
    with AtomicTableWriter(path, table_type) as writer:
        writer.append(frame)
    return writer.path


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write a small JSON document (manifests, summaries) atomically."""
    text = json.dumps(data, ensure_ascii=False, indent=1, default=str)
    return write_bytes_atomic(text.encode("utf-8"), path)
