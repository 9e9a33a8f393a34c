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

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dataflow_mm.errors import StorageError
from dataflow_mm.storage import jsoncodec
from dataflow_mm.storage.atomic import AtomicFile, write_bytes_atomic
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
    sha256: str | None = None  # of the raw lines read (JSONL only): identifies the chunk across runs


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


def _encode_csv_cell(value: Any) -> Any:
    """A CSV cell that reads back as ``value`` (see the module docstring); None/NaN give an empty cell."""
    if isinstance(value, str):
        return jsoncodec.dumps(value).decode("utf-8") if value == "" or _reads_as_json(value) else value
    plain = jsoncodec.to_plain(value)
    return None if plain is None else jsoncodec.dumps(plain).decode("utf-8")


def _decode_csv_cell(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return _csv_json(value)
        except ValueError:
            return value
    return value


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


def _parquet_json_columns(parquet_file: Any) -> set[str]:
    metadata = parquet_file.schema_arrow.metadata or {}
    raw = metadata.get(JSON_COLUMNS_KEY)
    return set(json.loads(raw)) if raw else set()


def _batch_frame(batch: Any, json_columns: set[str]) -> pd.DataFrame:
    """A record batch as an object frame of plain Python values (lists stay lists, ints stay ints)."""
    data = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        values = column.to_pylist()
        if name in json_columns:
            values = [None if v is None else json.loads(v) for v in values]
        data[name] = values
    return pd.DataFrame(data, dtype=object) if data else pd.DataFrame(index=range(batch.num_rows))


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
    with path.open("rb") as handle:
        yield from iter_jsonl_lines(handle, chunk_size)


def iter_jsonl_lines(lines: Iterable[bytes], chunk_size: int) -> Iterator[Chunk]:
    """Chunks of JSONL lines (a file handle, or lines streamed from another step), parsed as ``iter_jsonl``.

    Each chunk's ``sha256`` is the hash of the raw lines it was read from, so a chunk can be matched
    with the same chunk of an earlier run however its lines arrived.
    """
    records: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    digest = hashlib.sha256()
    for line_no, raw in enumerate(lines, start=1):
        digest.update(raw)
        parsed = _parse_jsonl_line(raw.rstrip(b"\r\n"), line_no)
        if parsed is None:
            continue
        if isinstance(parsed, Reject):
            rejects.append(parsed)
        else:
            records.append(parsed)
        if len(records) >= chunk_size:
            yield Chunk(_records_frame(records), rejects, digest.hexdigest())
            records, rejects, digest = [], [], hashlib.sha256()
    if records or rejects:
        yield Chunk(_records_frame(records), rejects, digest.hexdigest())


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
            parquet_file = pq.ParquetFile(path)
            json_columns = _parquet_json_columns(parquet_file)
            for batch in parquet_file.iter_batches(batch_size=chunk_size):
                yield Chunk(_batch_frame(batch, json_columns))
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


def _check_columns(frame: pd.DataFrame) -> None:
    if frame.columns.has_duplicates:
        dupes = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise StorageError(f"Cannot write a table with duplicate column names: {dupes}")


def frame_to_jsonl(frame: pd.DataFrame) -> bytes:
    """JSON lines (UTF-8) for a frame: exact floats, NaN as null, unicode kept as is."""
    _check_columns(frame)
    return jsoncodec.records_jsonl(frame)


class AtomicTableWriter:
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
