"""FileStorage: a pipeline's steps as files in a cache folder.

Step 0 reads the user's file; the operator at step k reads step k and writes step k+1 to
``{cache_path}/{file_name_prefix}_step{k+1}.{cache_type}``. Each write is atomic, and records
that could not be read (malformed lines) go to ``<step file>.rejects.jsonl`` beside it.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage.chunks import Chunk
from dataflow_mm.storage.downloads import DOWNLOAD_TIMEOUT_S
from dataflow_mm.storage.formats import DEFAULT_CHUNK_SIZE, iter_table, read_table
from dataflow_mm.storage.lock import cache_lock
from dataflow_mm.storage.manifest import MANIFEST_SUFFIX, StepManifest
from dataflow_mm.storage.media import externalize_media, media_cache_dir
from dataflow_mm.storage.paths import check_file_name_prefix
from dataflow_mm.storage.remote import check_posix_cache_path
from dataflow_mm.storage.sources import resolve_first_entry
from dataflow_mm.storage.step import StepIdentity, StepTransaction
from dataflow_mm.storage.table_types import check_table_type, table_type_of
from dataflow_mm.storage.table_writer import write_table

REJECTS_SUFFIX = ".rejects.jsonl"

# Extra outputs (files a step writes besides its step file, e.g. a config's ``output_jsonl_path``)
# planned by the ``forward()`` being compiled, whose steps have not run yet: path -> step file.
# Once a step has run, its manifest says the same (``producing_step``), in any process.
_planned: ContextVar[dict[str, Path] | None] = ContextVar("dataflow_mm_planned_outputs", default=None)


@contextmanager
def planning_outputs() -> Iterator[dict[str, Path]]:
    """Within this block (a pipeline's compile), ``record_produced`` notes the extra outputs planned."""
    token = _planned.set({})
    try:
        yield _planned.get() or {}
    finally:
        _planned.reset(token)


def record_produced(path: str | os.PathLike, step_file: str | os.PathLike) -> None:
    """Note that ``step_file``'s step will write ``path`` (kept only while a pipeline compiles, see
    ``planning_outputs``; after the step has run, its manifest lists ``path`` as an extra output)."""
    planned = _planned.get()
    if planned is not None:
        planned[os.path.abspath(os.fspath(path))] = Path(step_file)


def _same_file(recorded: str, path: str) -> bool:
    if os.path.abspath(recorded) == path:
        return True
    try:
        return os.path.samefile(recorded, path)
    except OSError:
        return False


def producing_step(path: str | os.PathLike, cache_path: str, file_name_prefix: str, cache_type: str) -> Path | None:
    """The step file of ``cache_path``/``file_name_prefix`` whose manifest lists ``path`` as an extra output.

    Of several, the earliest step wins; None when no manifest names it.
    """
    target = os.path.abspath(os.fspath(path))
    planned = (_planned.get() or {}).get(target)
    if planned is not None:
        return planned
    found: list[tuple[int, Path]] = []
    for manifest_file in Path(cache_path).glob(f"{file_name_prefix}_step*.{cache_type}{MANIFEST_SUFFIX}"):
        step_file = Path(str(manifest_file)[: -len(MANIFEST_SUFFIX)])
        number = step_number(step_file, cache_path, file_name_prefix, cache_type)
        manifest = StepManifest.load(step_file) if number is not None else None
        if number is None or manifest is None:
            continue
        if any(_same_file(extra, target) for extra in manifest.extra_outputs):
            found.append((number, step_file))
    return min(found)[1] if found else None


def step_number(path: str | os.PathLike, cache_path: str, file_name_prefix: str, cache_type: str) -> int | None:
    """``k`` when ``path`` is the file of step ``k`` of that cache path, prefix and type; else None."""
    path = Path(path)
    match = re.fullmatch(rf"{re.escape(file_name_prefix)}_step(\d+)\.{re.escape(cache_type)}", path.name)
    if match is None or os.path.abspath(path.parent) != os.path.abspath(cache_path):
        return None
    return int(match.group(1))


class FileStorage:
    """The seed's FileStorage: ``step()`` moves to the next operator, ``read``/``write`` use its files."""

    def __init__(
        self,
        first_entry_file_name: str,
        cache_path: str = "./cache",
        file_name_prefix: str = "dataflow_cache_step",
        cache_type: Literal["jsonl", "json", "csv", "parquet"] = "jsonl",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        wait_for_lock: bool = False,
        split: str | None = None,
        download_timeout: float = DOWNLOAD_TIMEOUT_S,
        retry_failed: bool = False,
    ) -> None:
        self.first_entry_file_name = str(first_entry_file_name)
        self.cache_path = check_posix_cache_path(str(cache_path))
        self.split = split  # a DatasetDict folder's split (see storage.source_tables)
        self.file_name_prefix = check_file_name_prefix(file_name_prefix)
        self.cache_type = check_table_type(cache_type)
        if chunk_size < 1:
            raise StorageError(f"chunk_size must be at least 1, not {chunk_size}")
        self.chunk_size = chunk_size
        self.wait_for_lock = bool(wait_for_lock)
        if not download_timeout > 0:
            raise StorageError(f"download_timeout must be > 0 seconds, not {download_timeout}")
        self.download_timeout = float(download_timeout)  # the whole of one attempt at an image URL
        self.retry_failed = bool(retry_failed)  # a rerun also redoes the rows that failed permanently
        self.operator_step = -1
        self._step_offset = 0
        self._origin: FileStorage = self
        self._first_entry: Path | None = None
        self.pipeline_name: str | None = None  # set by the pipeline that compiles it (see storage.step_owner)

    def claim_for_pipeline(self, name: str) -> None:
        """Record that pipeline ``name`` runs this storage's steps (in their manifests' ``writer``)."""
        self.pipeline_name = name
        self._origin.pipeline_name = name

    # -- stepping -----------------------------------------------------------------------------
    def step(self) -> FileStorage:
        """Advance to the next operator and return a snapshot of the storage at that step."""
        self.operator_step += 1
        if self.operator_step == 0:  # fixed for the run: a later step's own extra outputs must not move it
            self._step_offset = self._find_step_offset()
        snapshot = copy.copy(self)
        snapshot._origin = self._origin
        return snapshot

    def reset(self) -> None:
        """Send the storage this snapshot came from back to before the first operator.

        Snapshots returned by ``step()`` keep their own step, so recorded calls stay valid.
        """
        self._origin.operator_step = -1

    # -- paths --------------------------------------------------------------------------------
    @property
    def step_offset(self) -> int:
        """Steps of this cache and prefix that come before this storage's first one (fixed by ``step()``).

        0 normally; ``k`` when the first entry file is step ``k`` of the same cache path and prefix, or a
        file that step wrote as an extra output (its manifest lists it, see ``producing_step``): step
        files are then never shared.
        """
        return self._step_offset

    def _find_step_offset(self) -> int:
        first = os.path.abspath(self.first_entry_file_name)
        produced = producing_step(first, self.cache_path, self.file_name_prefix, self.cache_type)
        source = produced if produced is not None else first
        return step_number(source, self.cache_path, self.file_name_prefix, self.cache_type) or 0

    @property
    def output_step(self) -> int:
        """The number of the step file the current operator writes."""
        return max(self.operator_step, 0) + 1 + self.step_offset

    def step_file(self, index: int) -> Path:
        """The file of step ``index`` (0 is the user's input file)."""
        if index <= 0:
            return self.first_entry_path
        return Path(self.cache_path) / f"{self.file_name_prefix}_step{index}.{self.cache_type}"

    @property
    def first_entry_path(self) -> Path:
        """The table step 0 reads: the user's file, or the table built from a folder or a HF dataset.

        Resolved once per pipeline (on first use, so nothing is fetched before ``run``); see
        :mod:`dataflow_mm.storage.sources`.
        """
        origin = self._origin
        if origin._first_entry is None:
            origin._first_entry = resolve_first_entry(
                self.first_entry_file_name, self.cache_path, self.file_name_prefix, self.split
            )
        return origin._first_entry

    @property
    def input_path(self) -> Path:
        return self.step_file(self.operator_step + self.step_offset if self.operator_step > 0 else 0)

    @property
    def output_path(self) -> Path:
        return self.step_file(self.output_step)

    @property
    def rejects_path(self) -> Path:
        return Path(f"{self.output_path}{REJECTS_SUFFIX}")

    @property
    def input_type(self) -> str:
        return table_type_of(self.input_path) if self.operator_step <= 0 else self.cache_type

    @property
    def media_root(self) -> Path:
        """Folder against which relative media paths in the user's table are also tried."""
        from dataflow_mm.storage.source_tables import source_media_root  # local shards: their folder

        return source_media_root(self.first_entry_path) or self.first_entry_path.resolve().parent

    @property
    def media_cache(self) -> Path:
        """Folder for images stored from bytes and downloaded from URLs (``{cache_path}/media``)."""
        return media_cache_dir(self.cache_path)

    def check_writable(self) -> None:
        """Fail fast, before any model loads, when the cache folder cannot be written."""
        cache = Path(self.cache_path)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=cache)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"Cache path '{cache}' is not writable: {exc.strerror or exc}") from exc

    def locked(self) -> AbstractContextManager[None]:
        """Hold the cache folder for this run (see ``storage.lock``); waits when ``wait_for_lock``."""
        return cache_lock(self.cache_path, wait=self.wait_for_lock)

    def open_step(self, identity: StepIdentity, streamed: bool = False) -> StepTransaction:
        """The transaction that writes the current step (parts, markers, rejects, extra outputs, manifest).

        ``streamed``: the input is still being written by the step before; its chunks come from it.
        """
        return StepTransaction(self, identity, streamed, self.retry_failed)

    # -- data ---------------------------------------------------------------------------------
    def iter_chunks(self, chunk_size: int | None = None) -> Iterator[Chunk]:
        """The input of the current step, in chunks of rows (with the records rejected on the way)."""
        yield from iter_table(self.input_path, self.input_type, chunk_size or self.chunk_size)

    def read(self, output_type: Literal["dataframe", "dict"] = "dataframe") -> pd.DataFrame | list[dict[str, Any]]:
        """The whole input of the current step, as a DataFrame or a list of dicts."""
        frame = read_table(self.input_path, self.input_type).frame
        if output_type == "dataframe":
            return frame
        if output_type == "dict":
            return frame.to_dict(orient="records")
        raise ValueError(f"output_type must be 'dataframe' or 'dict', not '{output_type}'")

    def write(self, data: pd.DataFrame | list[dict[str, Any]]) -> str:
        """Write the current step's output atomically and return its path."""
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        frame = externalize_media(frame, self.media_cache)  # image bytes go to files, the table keeps references
        return str(write_table(frame, self.output_path, self.cache_type))

    def __repr__(self) -> str:
        return f"FileStorage(step={self.operator_step}, input='{self.input_path}', cache='{self.cache_path}')"
