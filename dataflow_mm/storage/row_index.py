"""Which input rows a step has computed before, and what became of each: the step's row index.

A row is identified by its content (the sha256 of its canonical JSON: keys sorted, missing and null
values left out), not by its position, so rows appended, inserted, deleted or reordered in the input
keep their identity. The index is per step file and tied to the step's fingerprint through the manifest.

Files beside a step file (written by the step's commit, before its manifest; see ``storage.step``):

* ``<step file>.rows.ndjson``: one ``[key, outcome, lines]`` per input row, in step-file order:
  the row's key, its outcome (``done`` / ``failed`` / ``pending``, see ``errors.row_outcome``) and how
  many output lines it produced (0 for a row a filter dropped). Its sha256 is in the manifest.
* the output lines themselves: the step file when it is JSONL; for another cache type,
  ``<step file>.lines.ndjson`` (what the JSONL step file would hold; its sha256 is in the manifest).

A rerun whose input changed, or whose step has pending rows, takes the output lines of every row
whose key it knows (done, or failed unless ``--retry_failed``) from there, byte for byte, and
sends only the other rows to the operator. An index whose files do not match their recorded hashes
(a run killed between writing them, an older cache) is not used: the step is computed as before.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import pandas as pd

from dataflow_mm.common.errors import ERROR_COLUMN, ROW_DONE, ROW_FAILED, ROW_PENDING, row_outcome
from dataflow_mm.storage.atomic import write_json_lines_atomic
from dataflow_mm.storage.hashing import file_sha256
from dataflow_mm.storage.jsoncodec import frame_records, to_plain

ROWS_SUFFIX = ".rows.ndjson"  # not ending in a table type's suffix: never taken for a step file
LINES_SUFFIX = ".lines.ndjson"
ROWS_KEY = "rows"  # a chunk marker's [key, outcome, lines] per input row
_RANK = {ROW_DONE: 0, ROW_FAILED: 1, ROW_PENDING: 2}
_KEY_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def rows_path(step_file: str | os.PathLike) -> Path:
    return Path(f"{step_file}{ROWS_SUFFIX}")


def lines_path(step_file: str | os.PathLike) -> Path:
    """Where a step's output lines are kept as JSON lines: the step file itself when it is JSONL."""
    step_file = Path(step_file)
    return step_file if step_file.suffix == ".jsonl" else Path(f"{step_file}{LINES_SUFFIX}")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def row_keys(frame: pd.DataFrame) -> list[str]:
    """The content key of each row of ``frame`` (see the module docstring)."""
    keys = []
    for record in frame_records(frame):
        plain = {k: v for k, v in record.items() if not _missing(v)}
        try:
            text = orjson.dumps(plain, option=_KEY_OPTIONS)
        except TypeError:  # orjson's JSONEncodeError: a pandas value, an int beyond 64 bits, a lone surrogate
            value = to_plain(plain)
            text = json.dumps(value, sort_keys=True, ensure_ascii=True, default=str).encode("ascii")
        keys.append(hashlib.sha256(text).hexdigest()[:32])
    return keys


def output_positions(rows: int, out: pd.DataFrame) -> list[int] | None:
    """For each output row, the position of the input row it came from (operators keep the input's index:
    0..rows-1), or None when the output's index does not say (not in order, or not the input's)."""
    try:
        positions = [int(label) for label in out.index]
    except (TypeError, ValueError):
        return None
    if any(p < 0 or p >= rows for p in positions) or any(a > b for a, b in itertools.pairwise(positions)):
        return None
    return positions


def row_records(keys: list[str], positions: list[int], outcomes: list[str]) -> list[list[Any]]:
    """``[key, outcome, lines]`` per input row, from the input position and outcome of each output row."""
    lines = [0] * len(keys)
    worst = [ROW_DONE] * len(keys)
    for position, outcome in zip(positions, outcomes, strict=True):
        lines[position] += 1
        if _RANK[outcome] > _RANK[worst[position]]:
            worst[position] = outcome
    return [[key, worst[i], lines[i]] for i, key in enumerate(keys)]


def outcomes_of(out: pd.DataFrame) -> list[str]:
    """Each output row's outcome, from its ``error`` field."""
    if ERROR_COLUMN not in out.columns:
        return [ROW_DONE] * len(out)
    return [row_outcome(value) for value in out[ERROR_COLUMN].tolist()]


def write_row_index(step_file: str | os.PathLike, chunks: Iterable[list[list[Any]] | None]) -> str:
    """Write the row index from each chunk marker's rows, in order, atomically; its sha256, or "" (and no
    file) when a chunk has none (a marker written before row indexes, or an operator that reorders rows)."""
    target = rows_path(step_file)
    try:
        return write_json_lines_atomic(target, (row for rows in chunks for row in _rows_or_none(rows)))
    except _NoIndex:
        target.unlink(missing_ok=True)
        return ""


def _rows_or_none(rows: list[list[Any]] | None) -> list[list[Any]]:
    if rows is None:
        raise _NoIndex
    return rows


class _NoIndex(Exception):
    """A chunk without row records: the step gets no index."""


@dataclass(frozen=True)
class KnownRow:
    """A row an earlier run of the step computed: its outcome and where its output lines are."""

    outcome: str
    offset: int
    length: int


def redo(outcome: str, retry_failed: bool) -> bool:
    """Whether a row with this earlier outcome is computed again: pending, or failed when retried."""
    return outcome == ROW_PENDING or (retry_failed and outcome == ROW_FAILED)


def part_rows(rows: list[list[Any]], data: bytes, retry_failed: bool) -> dict[str, tuple[str, bytes]]:
    """Key -> (outcome, output lines) of the rows of a written chunk that stand (see ``redo``).

    ``rows`` is the chunk marker's ``[key, outcome, lines]`` per input row, ``data`` the chunk's lines
    in the same order."""
    lines = data.splitlines(keepends=True)
    found: dict[str, tuple[str, bytes]] = {}
    start = 0
    for key, outcome, count in rows:
        if not redo(outcome, retry_failed):
            found.setdefault(key, (outcome, b"".join(lines[start : start + count])))
        start += count
    return found


class RowIndex:
    """An earlier run's row index, loaded to reuse its output lines (see the module docstring)."""

    def __init__(self, rows: dict[str, KnownRow], source: Path) -> None:
        self.rows = rows
        self.source = source
        self._handle: IO[bytes] | None = None

    @classmethod
    def load(cls, step_file: str | os.PathLike, rows_sha256: str, lines_sha256: str) -> RowIndex | None:
        """The index when its files are those the manifest recorded, else None."""
        if not rows_sha256 or not lines_sha256:
            return None
        source = lines_path(step_file)
        try:
            if file_sha256(source) != lines_sha256:
                return None
            rows: dict[str, KnownRow] = {}
            digest = hashlib.sha256()
            with rows_path(step_file).open("rb") as index, source.open("rb") as lines:
                offset = 0
                for raw in index:
                    digest.update(raw)
                    key, outcome, count = orjson.loads(raw)
                    length = sum(len(lines.readline()) for _ in range(count))
                    known = rows.get(key)  # a row repeated in the input: its best outcome stands
                    if known is None or _RANK[outcome] < _RANK[known.outcome]:
                        rows[key] = KnownRow(outcome, offset, length)
                    offset += length
                if lines.read(1):  # more output lines than the index accounts for
                    return None
        except (OSError, ValueError, TypeError):
            return None
        return cls(rows, source) if digest.hexdigest() == rows_sha256 else None

    def reusable(self, key: str, retry_failed: bool) -> KnownRow | None:
        """The earlier result of the row ``key`` when it can stand: done, or failed unless retried."""
        known = self.rows.get(key)
        return None if known is None or redo(known.outcome, retry_failed) else known

    def lines(self, known: KnownRow) -> bytes:
        """The output lines of a known row, as the earlier step file held them."""
        if self._handle is None:
            self._handle = self.source.open("rb")  # once per step; still the old file after the commit's rename
        self._handle.seek(known.offset)
        return self._handle.read(known.length)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def iter_row_index(step_file: str | os.PathLike) -> Iterator[list[Any]]:
    """``[key, outcome, lines]`` of each input row of a step, as its index holds them."""
    with rows_path(step_file).open("rb") as handle:
        for raw in handle:
            yield orjson.loads(raw)
