"""Inputs that are not one local table file: object storage, globs of shards, ``datasets`` folders, Arrow, WebDataset.

``first_entry_file`` may be

* a URL of any fsspec protocol (``s3://``, ``gs://``, ``hf://`` other than ``hf://datasets/...``, which the
  hub downloader keeps, ``http(s)://``) naming a table file, a glob of them (``s3://bucket/part-*.parquet``)
  or a brace pattern (``shard-{000000..000099}.tar``);
* a local glob or brace pattern;
* a ``datasets`` ``save_to_disk`` folder (``state.json``), local or remote; a ``DatasetDict`` folder
  (``dataset_dict.json``) with the split chosen by ``split`` (the scripts' ``--split``);
* an ``.arrow`` file (Arrow IPC file or stream, as ``datasets`` writes);
* a WebDataset ``.tar`` shard (see :mod:`dataflow_mm.storage.webdataset_reading`).

The shards are listed once, with their size and version (ETag, mtime), into a small source file
``{cache_path}/{prefix}_input.dfmm-source.json``; that file is what step 0 "is": its hash is the input's
identity (a rewritten shard changes it, so resume never mixes old and new rows), and reading it streams
the shards one after another in chunks of ``chunk_size`` rows, so memory stays flat however many shards
there are. Nothing is copied to local disk but the images that rows use (into the media cache).

A presigned URL (``http(s)`` with a signature in its query) is recorded without its query
(``common.secrets.unsigned_url``): its signature never reaches the cache, and a fresh presigned URL of
the same unchanged object is the same input, so the run resumes. The signed URL itself is kept in
memory only, by the process that listed it, to read the shard.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from dataflow_mm.common.errors import StorageError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.common.secrets import register_url_secrets, unsigned_url
from dataflow_mm.storage.arrow_exact import batch_frame, parquet_json_columns
from dataflow_mm.storage.atomic import write_bytes_atomic
from dataflow_mm.storage.chunks import Chunk, Reject, records_frame
from dataflow_mm.storage.csv_cells import decode_csv_cell
from dataflow_mm.storage.remote import (
    expand_braces,
    filesystem,
    fs_is_local,
    full_url,
    has_glob,
    has_pattern,
    scheme_of,
    url_path,
    version_of,
)
from dataflow_mm.storage.table_types import SOURCE_SUFFIX

log = get_logger("storage.source_tables")

SHARD_KINDS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".arrow": "arrow",
    ".tar": "webdataset",
    ".tgz": "webdataset",
    ".tar.gz": "webdataset",
}
_DIRECT_SUFFIXES = (".arrow", ".tar", ".tgz", ".tar.gz")  # local files that step 0 cannot read as they are
_SIGNED_URLS: dict[str, str] = {}  # a signed shard's URL as its source file records it -> the signed URL


def is_source_file(path: str | Path) -> bool:
    """True for a source file written by :func:`source_table`."""
    return str(path).endswith(SOURCE_SUFFIX)


def is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def needs_source_table(source: str, is_remote_source: bool) -> bool:
    """True when ``source`` is read through a source file (see the module docstring)."""
    if is_remote_source:
        return True
    path = Path(source).expanduser()
    if path.exists():
        return path.name.lower().endswith(_DIRECT_SUFFIXES) or is_datasets_folder(path)
    return has_pattern(source)


# -- listing the shards --------------------------------------------------------------------------
def _kind_of(name: str) -> str | None:
    lower = url_path(name).lower()
    return SHARD_KINDS.get(".tar.gz") if lower.endswith(".tar.gz") else SHARD_KINDS.get(posixpath.splitext(lower)[1])


def _dataset_files(fs: Any, folder: str, split: str | None, source: str) -> list[str]:
    """The Arrow files of a ``save_to_disk`` folder (a DatasetDict's split when ``split`` is given)."""
    if fs.isfile(posixpath.join(folder, "dataset_dict.json")):
        splits = json.loads(fs.cat_file(posixpath.join(folder, "dataset_dict.json"))).get("splits", [])
        if split is None or split not in splits:
            said = f"split '{split}' is not one of them" if split else "choose one with --split"
            raise StorageError(f"'{source}' is a DatasetDict folder with splits {splits}: {said}")
        folder, split = posixpath.join(folder, split), None
    if split is not None:
        raise StorageError(f"--split '{split}' was given, but '{source}' is not a DatasetDict folder")
    state = json.loads(fs.cat_file(posixpath.join(folder, "state.json")))
    files = [posixpath.join(folder, entry["filename"]) for entry in state.get("_data_files", [])]
    if not files:
        raise StorageError(f"'{source}': the datasets folder's state.json lists no Arrow files")
    return files


def list_shards(source: str, split: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """``(kind, [{"url", "size", "version"}...])`` of every file ``source`` names, in order."""
    register_url_secrets(source)  # a presigned URL's signature never reaches the log or an error line
    shards: list[dict[str, Any]] = []
    for pattern in expand_braces(source):
        fs, path = filesystem(pattern)
        if has_glob(pattern):
            found = fs.glob(path, detail=True)  # one listing gives every match's size and version
            infos = [found[p] for p in sorted(found) if found[p].get("type") != "directory"]
        elif fs.isdir(path):
            if not any(fs.isfile(posixpath.join(path, name)) for name in ("state.json", "dataset_dict.json")):
                raise StorageError(f"'{source}' is a folder, not a table: name its files or a glob (part-*.parquet)")
            infos = [fs.info(p) for p in _dataset_files(fs, path, split, source)]
            split = None
        elif fs.exists(path):
            infos = [fs.info(path)]
        else:
            raise StorageError(f"Input file does not exist: '{pattern}'")
        for info in infos:
            url = full_url(fs, info["name"])
            shards.append({"url": url, "size": info.get("size"), "version": version_of(info)})
    if split is not None:
        raise StorageError(f"--split '{split}' was given, but '{source}' is not a DatasetDict folder")
    if not shards:
        raise StorageError(f"first_entry_file '{source}': no file matches")
    kinds = {_kind_of(s["url"]) for s in shards}
    if len(kinds) != 1 or None in kinds:
        names = sorted({posixpath.splitext(s["url"])[1] or "(none)" for s in shards})
        raise StorageError(
            f"first_entry_file '{source}': shards must all be one of {', '.join(sorted(SHARD_KINDS))}, found {names}"
        )
    return kinds.pop() or "", shards


def source_table(source: str, cache_path: Path, prefix: str, split: str | None = None) -> Path:
    """Write (when changed) and return the source file of ``source`` (see the module docstring)."""
    kind, shards = list_shards(source, split)
    recorded = [_recorded(shard) for shard in shards]
    spec = {"source": unsigned_url(source), "split": split, "kind": kind, "shards": recorded}
    data = json.dumps(spec, indent=1).encode("utf-8")
    target = Path(cache_path) / f"{prefix}_input{SOURCE_SUFFIX}"
    if not target.is_file() or target.read_bytes() != data:  # unchanged shards: same file, so resume holds
        write_bytes_atomic(data, target)
    total = sum(s["size"] or 0 for s in shards)
    log.info(f"first_entry_file: {len(shards)} {kind} shard(s), {total / 1e6:.1f} MB, from '{source}' -> {target}")
    return target


def _recorded(shard: dict[str, Any]) -> dict[str, Any]:
    """A listed shard as its source file records it: a signed URL without its signature (kept in memory)."""
    url = shard["url"]
    public = unsigned_url(url)
    if public == url:
        return shard
    _SIGNED_URLS[public] = url
    return {**shard, "url": public, "signed": True}


def _readable_url(shard: dict[str, Any]) -> str:
    """The URL to read a recorded shard from: a signed one only as this process was given it."""
    url = shard["url"]
    if not shard.get("signed"):
        return url
    signed = _SIGNED_URLS.get(url)
    if signed is None:
        raise StorageError(
            f"input shard '{url}' was given as a signed URL, which the cache does not keep: "
            "run again with a signed URL of it as first_entry_file"
        )
    return signed


def source_media_root(table: Path) -> Path | None:
    """For a source file of local shards, their common folder: relative image paths in them are tried
    against it (as against a table file's own folder); None for anything else. Relative paths in remote
    tables are not resolved against the bucket: write them as URLs (``s3://bucket/images/a.jpg``)."""
    if is_source_file(table):
        try:
            urls = [s["url"] for s in json.loads(Path(table).read_text(encoding="utf-8"))["shards"]]
        except (OSError, ValueError, KeyError, TypeError):
            urls = []
        if urls and not any(scheme_of(u) for u in urls):
            return Path(posixpath.commonpath([posixpath.dirname(u) for u in urls]))
    return None


# -- reading them --------------------------------------------------------------------------------
def _arrow_batches(handle: Any) -> Iterator[Any]:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_file(handle)
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
        return
    except pa.ArrowInvalid:
        handle.seek(0)
    yield from pa.ipc.open_stream(handle)  # what datasets' save_to_disk writes


def _shard_chunks(fs: Any, path: str, url: str, kind: str, chunk_size: int) -> Iterator[tuple[pd.DataFrame, list]]:
    """``(frame, rejects)`` pieces of one shard, each at most ``chunk_size`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dataflow_mm.storage.jsonl_reading import iter_jsonl_lines, load_json_text
    from dataflow_mm.storage.webdataset_reading import iter_shard_rows

    local = fs_is_local(fs)
    with fs.open(path, "rb") as handle:
        if kind == "parquet":
            parquet_file = pq.ParquetFile(handle)
            columns = parquet_json_columns(parquet_file)
            for batch in parquet_file.iter_batches(batch_size=chunk_size):
                yield batch_frame(batch, columns), []
        elif kind == "arrow":
            source = pa.memory_map(path) if local else handle
            for batch in _arrow_batches(source):
                for start in range(0, batch.num_rows, chunk_size):
                    yield batch_frame(batch.slice(start, chunk_size), set()), []
        elif kind == "jsonl":
            for chunk in iter_jsonl_lines(handle, chunk_size):
                rejects = [Reject(r.line, r.cause, f"{url}: {r.message}", r.raw) for r in chunk.rejects]
                yield chunk.frame, rejects
        elif kind == "csv":
            reader = pd.read_csv(handle, chunksize=chunk_size, dtype=object, keep_default_na=False, na_values=[""])
            for frame in reader:
                yield frame.reset_index(drop=True).map(decode_csv_cell), []
        elif kind == "json":
            data = load_json_text(handle.read().decode("utf-8-sig"))
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise StorageError(f"JSON table '{url}' must be a list of objects")
            for start in range(0, len(data), chunk_size):
                yield records_frame(data[start : start + chunk_size]), []
        else:
            rows: list[dict[str, Any]] = []
            for row in iter_shard_rows(handle, url):
                rows.append(row)
                if len(rows) >= chunk_size:
                    yield records_frame(rows), []
                    rows = []
            if rows:
                yield records_frame(rows), []


def iter_source(path: Path, chunk_size: int) -> Iterator[Chunk]:
    """The rows of every shard a source file lists, in order, in chunks of exactly ``chunk_size`` (the last fewer)."""
    import pyarrow as pa

    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        kind, shards = spec["kind"], spec["shards"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"cannot read the source file '{path}': {exc}") from None
    frames: list[pd.DataFrame] = []
    rejects: list[Reject] = []
    held = 0
    for shard in shards:
        url = shard["url"]
        fs, inner = filesystem(_readable_url(shard))
        try:
            _check_unchanged(fs, inner, shard)
            for frame, found in _shard_chunks(fs, inner, url, kind, chunk_size):
                rejects += found
                while len(frame):
                    take = frame.iloc[: chunk_size - held]
                    frames.append(take)
                    held += len(take)
                    frame = frame.iloc[len(take) :]
                    if held >= chunk_size:
                        yield Chunk(_joined(frames), rejects)
                        frames, rejects, held = [], [], 0
        except FileNotFoundError:
            raise StorageError(f"input shard '{url}' is gone (listed when the run started)") from None
        except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
            raise StorageError(f"cannot read input shard '{url}' as {kind}: {type(exc).__name__}: {exc}") from None
    if frames or rejects:
        yield Chunk(_joined(frames) if frames else pd.DataFrame(), rejects)


def _check_unchanged(fs: Any, path: str, shard: dict[str, Any]) -> None:
    """A shard rewritten since it was listed would mix old and new rows across a resume: stop instead."""
    fs.invalidate_cache(path)
    info = fs.info(path)
    if info.get("size") != shard["size"] or version_of(info) != shard["version"]:
        raise StorageError(
            f"input shard '{shard['url']}' changed since the run listed it (size or version): "
            "run again to start from the new shards"
        )


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True).astype(object)
