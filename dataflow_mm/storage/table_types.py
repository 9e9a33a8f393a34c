"""The table formats a step file may have, told from a file name; checks that a table can be read."""

from __future__ import annotations

import os
from pathlib import Path

from dataflow_mm.common.errors import StorageError

SUPPORTED_TYPES = ("jsonl", "json", "csv", "parquet")
SOURCE_SUFFIX = ".dfmm-source.json"  # declared here (the lowest module); storage.source_tables writes it


def table_type_of(path: str | os.PathLike) -> str:
    """The table type from a file name (``.jsonl``/``.json``/``.csv``/``.parquet``; ``source`` for the
    list of input shards that ``storage.source_tables`` writes, which only step 0 reads)."""
    if str(path).endswith(SOURCE_SUFFIX):
        return "source"
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


def check_readable(path: Path) -> Path:
    """``path`` when it is a readable table file; a clear StorageError when it is missing or a folder."""
    if not path.exists():
        raise StorageError(f"Input file does not exist: '{path}'")
    if path.is_dir():
        raise StorageError(f"Input path is a directory, not a table file: '{path}'")
    return path
