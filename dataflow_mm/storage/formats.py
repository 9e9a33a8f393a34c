"""Reading and writing the table formats a step file may have: jsonl, json, csv, parquet.

Reading streams in chunks. JSONL is read line by line so one malformed or non-UTF-8 line is
rejected (with its line number and reason) instead of failing the whole table. Values keep
their JSON types (object columns), so an integer stays an integer through every step.
Writing goes to a temporary file in the target folder and is renamed into place on success.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dataflow_mm.errors import StorageError
from dataflow_mm.storage.atomic import write_bytes_atomic
from dataflow_mm.surrogates import may_hold_surrogates, replace_lone_surrogates

SUPPORTED_TYPES = ("jsonl", "json", "csv", "parquet")
# Deepest list/object nesting a table record may have (the record itself is level 1); deeper JSONL lines are
# rejected (TooDeepJSONLine). Real rows nest a few levels; Parquet reads back about 45 nested lists at most.
MAX_JSON_DEPTH = 32
DEFAULT_CHUNK_SIZE = 512


@dataclass
class Reject:
    """An input record that could not become a row: where it was and why."""

    line: int
    cause: str
    message: str
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "cause": self.cause, "message": self.message, "raw": self.raw}


@dataclass
class Chunk:
    """A slice of a table: the rows read, and the records rejected while reading them."""

    frame: pd.DataFrame
    rejects: list[Reject] = field(default_factory=list)


def table_type_of(path: str | os.PathLike) -> str:
    """The table type from a file name (``.jsonl``/``.json``/``.csv``/``.parquet``)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in SUPPORTED_TYPES:
        return suffix
    raise StorageError(f"Cannot tell the table type of '{path}': use one of .jsonl, .json, .csv, .parquet")


def check_table_type(cache_type: str) -> str:
    if cache_type not in SUPPORTED_TYPES:
        raise StorageError(f"cache_type must be one of {', '.join(SUPPORTED_TYPES)}, not '{cache_type}'")
    return cache_type


def _encode_csv_cell(value: Any) -> Any:
    """Lists and dicts go into CSV cells as JSON, so they come back as lists and dicts."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def _decode_csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def check_readable(path: Path) -> Path:
    """``path`` when it is a readable table file; a clear StorageError when it is missing or a folder."""
    if not path.exists():
        raise StorageError(f"Input file does not exist: '{path}'")
    if path.is_dir():
        raise StorageError(f"Input path is a directory, not a table file: '{path}'")
    return path


def _records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(records, dtype=object) if records else pd.DataFrame()


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (json.loads would silently keep the last)."""


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _check_csv_header(path: Path) -> None:
    import csv

    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise StorageError(f"Cannot parse CSV '{path}': {exc}") from exc
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise StorageError(f"CSV '{path}' has duplicate column names: {duplicates}")


class TooDeepError(ValueError):
    """A JSON value nested deeper than ``MAX_JSON_DEPTH`` (a line of 100,000 brackets, say)."""


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when lists/objects in ``value`` nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def load_json_text(text: str, max_depth: int = MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` for table input: nesting capped at ``max_depth`` (``TooDeepError``), lone
    surrogates replaced by U+FFFD (see ``dataflow_mm.surrogates``)."""
    too_deep = TooDeepError(f"a record is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise too_deep from None
    if text.count("[") + text.count("{") > max_depth and _depth_exceeds(value, max_depth):
        raise too_deep
    return replace_lone_surrogates(value) if may_hold_surrogates(text) else value


def _parse_jsonl_line(raw: bytes, line_no: int) -> dict[str, Any] | Reject | None:
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        preview = raw[:200].decode("utf-8", errors="replace")
        return Reject(line_no, "NonUTF8Line", f"line {line_no} is not valid UTF-8 ({exc.reason})", preview)
    if not text.strip():
        return None
    try:
        value = load_json_text(text, object_pairs_hook=_object_without_duplicates)
    except json.JSONDecodeError as exc:
        return Reject(line_no, "MalformedJSONLine", f"line {line_no}: {exc.msg} at column {exc.colno}", text[:200])
    except DuplicateKeyError as exc:
        return Reject(line_no, "DuplicateKeyLine", f"line {line_no} repeats the key '{exc}'", text[:200])
    except TooDeepError as exc:
        return Reject(line_no, "TooDeepJSONLine", f"line {line_no}: {exc}", text[:200])
    if not isinstance(value, dict):
        kind = type(value).__name__
        return Reject(line_no, "NotAnObjectLine", f"line {line_no} holds a JSON {kind}, not an object", text[:200])
    return value


def iter_jsonl(path: Path, chunk_size: int) -> Iterator[Chunk]:
    """Chunks of a JSONL file; bad lines become Rejects, blank lines are skipped."""
    records: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            parsed = _parse_jsonl_line(raw.rstrip(b"\r\n"), line_no)
            if parsed is None:
                continue
            if isinstance(parsed, Reject):
                rejects.append(parsed)
            else:
                records.append(parsed)
            if len(records) >= chunk_size:
                yield Chunk(_records_frame(records), rejects)
                records, rejects = [], []
    if records or rejects:
        yield Chunk(_records_frame(records), rejects)


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
    if table_type == "jsonl":
        yield from iter_jsonl(path, chunk_size)
    elif table_type == "csv":
        _check_csv_header(path)
        try:
            for frame in pd.read_csv(path, chunksize=chunk_size, dtype=object, keep_default_na=False, na_values=[""]):
                yield Chunk(frame.reset_index(drop=True).map(_decode_csv_cell))
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise StorageError(f"Cannot parse CSV '{path}': {exc}") from exc
    elif table_type == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
                yield Chunk(batch.to_pandas(integer_object_nulls=True).astype(object))
        except pa.ArrowException as exc:
            raise StorageError(f"Cannot read Parquet '{path}' (corrupt or not Parquet): {exc}") from exc
    else:
        try:
            data = load_json_text(path.read_text(encoding="utf-8-sig"), max_depth=MAX_JSON_DEPTH + 1)  # + the list
        except (json.JSONDecodeError, UnicodeDecodeError, TooDeepError) as exc:
            raise StorageError(f"Cannot parse JSON '{path}': {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise StorageError(f"JSON table '{path}' must be a list of objects")
        yield from _iter_frame(_records_frame(data), chunk_size)


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


def frame_to_jsonl(frame: pd.DataFrame) -> str:
    """JSON lines for a frame (NaN becomes null; unicode kept as is)."""
    if frame.columns.has_duplicates:
        dupes = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise StorageError(f"Cannot write a table with duplicate column names: {dupes}")
    if frame.empty:
        return ""
    text = frame.to_json(orient="records", lines=True, force_ascii=False, date_format="iso")
    return text if text.endswith("\n") else text + "\n"


class AtomicTableWriter:
    """Writes a table chunk by chunk into a temp file, renamed into place by ``commit``.

    JSONL and CSV stream to disk; JSON and Parquet are assembled at commit (one object each).
    Used as a context manager, an exception discards the temp file and leaves the target untouched.
    """

    def __init__(self, path: str | os.PathLike, table_type: str | None = None) -> None:
        self.path = Path(path)
        self.table_type = table_type or table_type_of(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._held: list[pd.DataFrame] = []
        self._csv_header = True
        self.rows = 0

    def append(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        if self.table_type == "jsonl":
            with self._tmp.open("a", encoding="utf-8") as handle:
                handle.write(frame_to_jsonl(frame))
        elif self.table_type == "csv":
            frame.map(_encode_csv_cell).to_csv(self._tmp, mode="a", header=self._csv_header, index=False)
            self._csv_header = self._csv_header and frame.empty
        else:
            self._held.append(frame)

    @contextlib.contextmanager
    def raw_handle(self) -> Iterator[Any]:
        """The temp file opened for appending bytes (to join JSONL parts without parsing them)."""
        with self._tmp.open("ab") as handle:
            yield handle

    def commit(self) -> Path:
        if self.table_type in ("json", "parquet"):
            frame = pd.concat(self._held, ignore_index=True) if self._held else pd.DataFrame()
            if self.table_type == "json":
                records = json.loads(frame.to_json(orient="records", force_ascii=False)) if len(frame) else []
                self._tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
            else:
                frame.to_parquet(self._tmp, index=False)
        with self._tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> AtomicTableWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_table(frame: pd.DataFrame, path: str | os.PathLike, table_type: str | None = None) -> Path:
    """Write a whole table atomically."""
    with AtomicTableWriter(path, table_type) as writer:
        writer.append(frame)
    return writer.path


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write a small JSON document (manifests, summaries) atomically."""
    text = json.dumps(data, ensure_ascii=False, indent=1, default=str)
    return write_bytes_atomic(text.encode("utf-8"), path)
