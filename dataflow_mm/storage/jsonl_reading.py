"""JSONL read line by line: one malformed, non-UTF-8, too deep or duplicate-key line is a Reject, not a failure.

Each chunk's ``sha256`` is the hash of the raw lines it was read from, so a chunk can be matched
with the same chunk of an earlier run however its lines arrived (a file, or another step's stream).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dataflow_mm.common.surrogates import may_hold_surrogates, replace_lone_surrogates
from dataflow_mm.storage.chunks import Chunk, Reject, records_frame

# Deepest list/object nesting a table record may have (the record itself is level 1); deeper JSONL lines are
# rejected (TooDeepJSONLine). Real rows nest a few levels; Parquet reads back about 45 nested lists at most.
MAX_JSON_DEPTH = 32


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (json.loads would silently keep the last)."""


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


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
    surrogates replaced by U+FFFD (see ``dataflow_mm.common.surrogates``)."""
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
            yield Chunk(records_frame(records), rejects, digest.hexdigest())
            records, rejects, digest = [], [], hashlib.sha256()
    if records or rejects:
        yield Chunk(records_frame(records), rejects, digest.hexdigest())
