"""Only new rows cost anything: a chunk's rows computed before are reused, the others transformed in one call.

:class:`ReusingTransformer` wraps what transforms a step's chunks (in this process or on Ray). For each
chunk it keys the input rows by content (``storage.row_index``). Rows the step's earlier run computed
(done, or failed unless ``retry_failed``) take their output lines from that run's step file, byte for
byte; the others (new, or left pending) go to the operator together, as one sub-chunk. A chunk with
nothing to reuse is transformed whole, exactly as before. Every chunk's marker records its rows
(``[key, outcome, lines]``), from which the step's commit writes the row index the next run reuses.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import orjson
import pandas as pd

from dataflow_mm.common.errors import ERROR_COLUMN
from dataflow_mm.engine.chunk_processing import chunk_counts
from dataflow_mm.storage.chunks import records_frame
from dataflow_mm.storage.media_stamps import media_stamps
from dataflow_mm.storage.row_index import (
    ROWS_KEY,
    KnownRow,
    RowIndex,
    outcomes_of,
    output_positions,
    row_keys,
    row_records,
)
from dataflow_mm.storage.step import StepChunk
from dataflow_mm.storage.table_writer import frame_to_jsonl

if TYPE_CHECKING:
    from dataflow_mm.core.operator import OperatorCall

REUSE_IN_FLIGHT = 4  # chunks in flight, times the operator's own, while a step reuses an earlier run's rows


class ReusingTransformer:
    """``inner`` on the rows of each chunk that ``previous`` cannot answer (see the module docstring)."""

    def __init__(self, inner: Any, call: OperatorCall, previous: RowIndex | None, retry_failed: bool = False) -> None:
        """``inner``: the step's ``ChunkTransformer`` (``engine.step_executor``; not imported: it imports this)."""
        self.inner = inner
        self.call = call
        self.previous = previous
        self.retry_failed = retry_failed
        self.rows_reused = 0
        self.rows_computed = 0
        self._lock = threading.Lock()  # chunks may be transformed in threads; one reader of the old lines

    @property
    def in_flight(self) -> int:
        """The inner transformer's chunks in flight, read each time (a vLLM serving's grows once its window is
        known). Chunks mostly reused send few rows each: an operator that takes chunks from threads (an API
        serving, whose request pool still bounds the requests at once) gets more of them to keep it full."""
        inner = self.inner.in_flight
        return inner * (REUSE_IN_FLIGHT if self.previous is not None and inner > 1 else 1)

    def transform(self, chunk: StepChunk) -> tuple[pd.DataFrame | bytes, dict[str, Any]]:
        frame = chunk.frame
        keys = row_keys(frame)
        ordered = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
        known: list[KnownRow | tuple[str, bytes] | None] = [None] * len(keys)
        if self.previous is not None and ordered:
            known = [self.previous.reusable(key, self.retry_failed) for key in keys]
        if chunk.written_rows and ordered:  # an interrupted run wrote this chunk: its standing rows are kept
            known = [chunk.written_rows.get(key, row) for key, row in zip(keys, known, strict=True)]
        if not any(known):
            return self._whole(chunk, keys)
        todo = [i for i, row in enumerate(known) if row is None]
        computed: dict[int, list[tuple[bytes, str]]] = {i: [] for i in todo}
        if todo:
            sub = StepChunk(chunk.index, frame.iloc[todo], [], chunk.sha256)
            out, _ = self.inner.transform(sub)
            positions = output_positions(len(frame), out)
            if positions is None or not set(positions) <= set(todo):  # the operator did not keep the index
                return self._whole(chunk, keys)
            lines = frame_to_jsonl(out).splitlines(keepends=True)
            for position, line, outcome in zip(positions, lines, outcomes_of(out), strict=True):
                computed[position].append((line, outcome))
        parts: list[bytes] = []
        rows: list[list[Any]] = []
        with self._lock:
            for position, key in enumerate(keys):
                row = known[position]
                if isinstance(row, tuple):  # (outcome, lines) of the chunk an interrupted run wrote
                    parts.append(row[1])
                    rows.append([key, row[0], row[1].count(b"\n")])
                    continue
                if row is not None:
                    data = self.previous.lines(row) if self.previous is not None else b""
                    parts.append(data)
                    rows.append([key, row.outcome, data.count(b"\n")])
                    continue
                made = computed[position]
                parts.extend(line for line, _ in made)
                positions_ = [0] * len(made)
                rows += row_records([key], positions_, [outcome for _, outcome in made])
            self.rows_reused += len(keys) - len(todo)
            self.rows_computed += len(todo)
        data = b"".join(parts)
        return data, {**self._counts(chunk, data), ROWS_KEY: rows}

    def _whole(self, chunk: StepChunk, keys: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The chunk transformed whole (as without an index), its rows recorded when the output says which."""
        out, counts = self.inner.transform(chunk)
        with self._lock:
            self.rows_computed += len(keys)
        positions = output_positions(len(chunk.frame), out)
        if positions is not None:
            counts = {**counts, ROWS_KEY: row_records(keys, positions, outcomes_of(out))}
        return out, counts

    def _counts(self, chunk: StepChunk, data: bytes) -> dict[str, Any]:
        """The marker's counts of a chunk put together from reused and new lines (as ``run_chunk`` counts)."""
        operator, keys = self.call.operator, self.call.keys
        merged = records_frame([_load_line(line) for line in data.splitlines()])
        if ERROR_COLUMN not in merged.columns:
            merged[ERROR_COLUMN] = None
        counts = chunk_counts(operator, chunk.frame, chunk.rejects, merged, keys)
        frame = chunk.frame
        columns = (frame[c] for c in operator.media_columns(**keys) if c in frame.columns)
        media = media_stamps(columns, self.call.storage.media_root)
        if media:
            counts["media"] = media
        return counts

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            if self.previous is not None:
                self.previous.close()


def _load_line(line: bytes) -> dict[str, Any]:
    """One output line this step wrote (trusted: no reject rules), read fast; exactly for ints beyond 64 bits."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)
