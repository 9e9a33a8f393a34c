"""The step transaction: everything one step writes, in the order that survives a kill.

``storage.open_step(identity)`` gives a :class:`StepTransaction` that owns the step's chunk parts
and their done-markers, its rejects file, its extra outputs and its manifest::

    with storage.open_step(identity) as step:
        if step.current_manifest() is None:          # not already complete
            for chunk in step.pending():
                step.write(chunk, out, counts)
            step.commit(stats)

A chunk is done when its marker exists, the media it read are unchanged and, when the marker records
the hash of the input lines it was made from, those lines are the same now. ``commit`` joins the parts
into the step file, writes the rejects, the extra outputs and the row index (``storage.row_index``),
then the manifest, and only then removes the parts: a kill at any point leaves either parts to resume
from or a complete step.

A step is current only when its manifest proves its file current *and* it holds no pending row (nor,
with ``retry_failed``, a failed one): a step left with pending rows runs again, reusing through its
row index (``previous_rows``) the output of every row it has computed before.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from dataflow_mm.common.row_outcomes import stats_counts
from dataflow_mm.storage.atomic import AtomicFile, remove_stale_temps
from dataflow_mm.storage.chunks import Chunk, Reject
from dataflow_mm.storage.formats import read_table
from dataflow_mm.storage.manifest import (
    StepManifest,
    file_sha256,
    manifest_path,
    media_path,
    media_unchanged,
    write_media_stamps,
)
from dataflow_mm.storage.media_stamps import changed_media
from dataflow_mm.storage.parts import ChunkParts
from dataflow_mm.storage.row_index import (
    ROWS_KEY,
    RowIndex,
    lines_path,
    part_rows,
    redo,
    rows_path,
    write_row_index,
)
from dataflow_mm.storage.step_owner import check_step_owner, writer_of
from dataflow_mm.storage.table_types import check_readable, table_type_of
from dataflow_mm.storage.table_writer import write_table


class StepFiles(Protocol):
    """What a step transaction needs of its storage (``FileStorage`` is one): the step's files and its input."""

    cache_type: str
    chunk_size: int

    @property
    def input_path(self) -> Path: ...

    @property
    def output_path(self) -> Path: ...

    @property
    def rejects_path(self) -> Path: ...

    def iter_chunks(self) -> Iterator[Chunk]: ...


STREAMED = "streamed"  # the parts state's input hash while the input is still being written by the step before
CHUNK_SHA_KEY = "input_chunk_sha256"  # a marker's hash of the input lines its chunk was made from


@dataclass(frozen=True)
class StepIdentity:
    """What produces a step: the operator's name, fingerprint, parameters, provenance and extra outputs."""

    operator: str
    fingerprint: str
    params: dict[str, Any]
    provenance: dict[str, Any]
    extra_outputs: tuple[Path, ...] = ()


@dataclass
class StepChunk:
    """One input chunk of a step; ``done`` holds its marker's counts when an earlier run completed it."""

    index: int
    frame: pd.DataFrame
    rejects: list[Reject]
    sha256: str | None = None
    done: dict[str, Any] | None = None
    # A chunk an interrupted run wrote with rows to redo (pending, or failed and retried): key -> (outcome,
    # output lines) of its other rows, which stand as they were written.
    written_rows: dict[str, tuple[str, bytes]] | None = None


@dataclass
class StepTotals:
    """The chunk markers of a step added up."""

    rows_in: int = 0
    rows_out: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    row_errors: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _working_dir() -> str:
    """This process's working folder, recorded in the manifest ("" when it was removed under us)."""
    try:
        return os.getcwd()
    except OSError:
        return ""


class StepTransaction:
    """The files of one step (see the module docstring). ``streamed``: the input file is still being written."""

    def __init__(
        self, storage: StepFiles, identity: StepIdentity, streamed: bool = False, retry_failed: bool = False
    ) -> None:
        self.storage = storage
        self.identity = identity
        self.retry_failed = retry_failed
        self.input_sha: str | None = None if streamed else file_sha256(check_readable(storage.input_path))
        state = {
            "fingerprint": identity.fingerprint,
            "input_sha256": self.input_sha or STREAMED,
            "chunk_size": storage.chunk_size,
        }
        self.parts = ChunkParts(storage.output_path, state)
        self.resumed = 0
        self._seen: list[int] = []

    # -- before the chunks ----------------------------------------------------------------------
    def current_manifest(self) -> StepManifest | None:
        """The manifest when it proves the step file current (extra outputs rewritten where stale), else None."""
        output = self.storage.output_path
        manifest = StepManifest.load(output)
        if self.input_sha is None or manifest is None:
            return None
        if not manifest.matches(self.identity.fingerprint, self.input_sha, output):
            return None
        counts = stats_counts(manifest.stats)
        if counts["pending"] or (self.retry_failed and counts["failed"]):
            return None  # rows left to do: the step runs again, reusing the rows it has (``previous_rows``)
        hashes = self._sync_extra_outputs(manifest.extra_output_sha256)
        if hashes != manifest.extra_output_sha256:
            manifest.extra_outputs = list(hashes)
            manifest.extra_output_sha256 = hashes
            manifest.save(output)
        self.parts.remove()  # left by a kill between manifest and cleanup
        return manifest

    def previous_rows(self) -> RowIndex | None:
        """The row index of the step file an earlier run of this same step wrote (same fingerprint, its
        media unchanged), to reuse the rows it computed; None when there is none to trust."""
        output = self.storage.output_path
        manifest = StepManifest.load(output)
        if manifest is None or manifest.fingerprint != self.identity.fingerprint or not manifest.rows_sha256:
            return None
        if manifest.media_sha256 and not media_unchanged(output, manifest.media_sha256):
            return None
        if manifest.media and changed_media(manifest.media):
            return None
        return RowIndex.load(output, manifest.rows_sha256, manifest.lines_sha256)

    def __enter__(self) -> StepTransaction:
        return self

    def __exit__(self, *_: Any) -> None:
        """Nothing to undo: finished chunks stay as parts for the next run to resume from."""

    def open(self) -> int:
        """Start (or resume) the parts; returns how many chunk markers an earlier run left."""
        output = self.storage.output_path
        check_step_owner(self.storage)  # a pipeline checked this at compile; a storage used alone, here
        written_files = (output, self.storage.rejects_path, manifest_path(output), media_path(output))
        for written in (*written_files, rows_path(output), lines_path(output)):
            remove_stale_temps(written)  # left by a run killed while writing this step
        self.resumed = self.parts.open()
        return self.resumed

    # -- the chunks -------------------------------------------------------------------------------
    def chunks(self, source: Iterable[Chunk] | None = None) -> Iterator[StepChunk]:
        """Every input chunk in order (from ``source``, default the input file), each with its done state."""
        for index, chunk in enumerate(source if source is not None else self.storage.iter_chunks()):
            self._seen.append(index)
            done = self._done(index, chunk.sha256)
            written = None
            rows = (done or {}).get(ROWS_KEY)
            if rows and any(redo(outcome, self.retry_failed) for _, outcome, _ in rows):
                written, done = part_rows(rows, self.parts.data(index), self.retry_failed), None
            yield StepChunk(index, chunk.frame, chunk.rejects, chunk.sha256, done, written)

    def pending(self, source: Iterable[Chunk] | None = None) -> Iterator[StepChunk]:
        """The input chunks not done yet."""
        return (chunk for chunk in self.chunks(source) if chunk.done is None)

    def _done(self, index: int, sha: str | None) -> dict[str, Any] | None:
        counts = self.parts.done(index)
        if counts is None or changed_media(counts.get("media", {})):
            return None
        recorded = counts.get(CHUNK_SHA_KEY)
        if self.parts.verify and (recorded is None or recorded != sha):
            return None
        if recorded is not None and sha is not None and recorded != sha:
            return None
        return counts

    def write(self, chunk: StepChunk, out: pd.DataFrame | bytes, counts: dict[str, Any]) -> None:
        """Store a finished chunk (rows, or their JSON lines, then the marker that makes it count)."""
        if chunk.sha256 is not None:
            counts = {**counts, CHUNK_SHA_KEY: chunk.sha256}
        self.parts.write(chunk.index, out, chunk.rejects, counts)

    def data(self, index: int) -> bytes:
        """A finished chunk's rows as JSON lines (what the step file holds for it)."""
        return self.parts.data(index)

    # -- after the chunks ---------------------------------------------------------------------------
    def totals(self) -> tuple[StepTotals, list[Reject]]:
        """The markers of this run's chunks added up, and every reject in order (parts of other chunks go)."""
        seen = set(self._seen)
        for index in self.parts.indices():
            if index not in seen:  # made from an earlier, longer input
                self.parts.discard(index)
        totals, rejects = StepTotals(), []
        rejected: Counter[str] = Counter()
        row_errors: Counter[str] = Counter()
        for index in self.parts.indices():
            counts = self.parts.done(index) or {}
            totals.rows_in += counts.get("rows_in", 0)
            totals.rows_out += counts.get("rows_out", 0)
            row_errors.update(counts.get("row_errors", {}))
            for name, value in counts.get("metrics", {}).items():
                totals.metrics[name] = totals.metrics.get(name, 0) + value
            for item in counts.get("rejects", []):
                rejects.append(Reject(**item))
                rejected[item["cause"]] += 1
        totals.rejected, totals.row_errors = dict(rejected), dict(row_errors)
        return totals, rejects

    def commit(self, stats: dict[str, Any], rejects: list[Reject]) -> None:
        """Join the parts into the step file, write rejects and extra outputs, then the manifest; drop the parts."""
        storage, output = self.storage, self.storage.output_path
        if self.input_sha is None:  # streamed: the step before has committed its file by now
            self.input_sha = file_sha256(check_readable(storage.input_path))
        self.parts.assemble(storage.cache_type)
        if rejects:
            write_table(pd.DataFrame([r.to_dict() for r in rejects]), storage.rejects_path, "jsonl")
        else:
            storage.rejects_path.unlink(missing_ok=True)
        # Extra outputs before the manifest: a kill before the manifest is saved reruns the step
        # (from its chunk parts, removed only once the manifest is there) and rewrites them.
        extra_hashes = self._sync_extra_outputs(None)
        # The chunks' media stamps, one marker at a time, into the step's media file (before the manifest).
        media_sha = write_media_stamps(
            output, ((self.parts.done(index) or {}).get("media", {}) for index in self.parts.indices())
        )
        output_sha = file_sha256(output)
        rows_sha, lines_sha = self._write_row_index(output_sha)
        StepManifest(
            operator=self.identity.operator,
            fingerprint=self.identity.fingerprint,
            params=self.identity.params,
            input_path=str(storage.input_path),
            input_sha256=self.input_sha,
            output_sha256=output_sha,
            stats=stats,
            provenance=self.identity.provenance,
            extra_outputs=list(extra_hashes),
            extra_output_sha256=extra_hashes,
            media_sha256=media_sha,
            working_dir=_working_dir(),
            writer=writer_of(storage),
            rows_sha256=rows_sha,
            lines_sha256=lines_sha,
        ).save(output)
        self.parts.remove()

    def _write_row_index(self, output_sha: str) -> tuple[str, str]:
        """The row index and (for a step file that is not JSONL) its output lines; their sha256s ("" when
        a chunk has no row records, e.g. one resumed from a marker written before row indexes)."""
        output = self.storage.output_path
        rows_sha = write_row_index(output, ((self.parts.done(i) or {}).get(ROWS_KEY) for i in self.parts.indices()))
        lines = lines_path(output)
        if not rows_sha:
            if lines != output:
                lines.unlink(missing_ok=True)
            return "", ""
        if lines == output:
            return rows_sha, output_sha
        self.parts.write_lines(lines)
        return rows_sha, file_sha256(lines)

    def _sync_extra_outputs(self, recorded: dict[str, str] | None) -> dict[str, str]:
        """Write each extra output that is missing or differs from ``recorded``; return every one's sha256.

        ``recorded`` is None on a fresh run (write them all). Each write is atomic, through the same
        writer as the step files (same file mode), and temp files of killed runs are removed first.
        """
        step_file = self.storage.output_path
        hashes: dict[str, str] = {}
        for target in self.identity.extra_outputs:
            remove_stale_temps(target)
            expected = (recorded or {}).get(str(target))
            if expected and target.is_file() and file_sha256(target) == expected:
                hashes[str(target)] = expected
                continue
            if table_type_of(target) != table_type_of(step_file):
                write_table(read_table(step_file).frame, target)
            else:
                with AtomicFile(target) as atomic:
                    shutil.copyfile(step_file, atomic.tmp)
            hashes[str(target)] = file_sha256(target)
        return hashes
