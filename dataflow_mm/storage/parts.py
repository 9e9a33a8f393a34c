"""Completed-chunk markers, so an interrupted step resumes from its last finished chunk.

While step k runs, each finished chunk is written to ``.<step file>.parts/chunk_NNNNNN.jsonl``
and then marked done by ``chunk_NNNNNN.done.json`` (its counts and rejects); both appear
atomically, so after a kill (SIGKILL included) a chunk is either wholly done or not at all.
The folder is tied to the operator fingerprint, the input's hash and the chunk size: if the
fingerprint or the chunk size changes, old parts are discarded; if only the input's hash differs
(or was unknown: a step streamed from the one before), a part is reused only when its marker
records the hash of the very input lines it was made from (``verify``). When every chunk is
done, the parts are joined into the step file and the folder is removed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from dataflow_mm.storage.atomic import write_bytes_atomic
from dataflow_mm.storage.chunks import Reject
from dataflow_mm.storage.jsonl_reading import iter_jsonl
from dataflow_mm.storage.table_writer import AtomicTableWriter, frame_to_jsonl, write_json_atomic

_MARKER_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

STATE_FILE = "state.json"


class ChunkParts:
    """The parts folder of one step file."""

    def __init__(self, step_file: Path, state: dict[str, Any]) -> None:
        self.step_file = Path(step_file)
        self.folder = self.step_file.with_name(f".{self.step_file.name}.parts")
        self.state = state
        self.verify = False  # parts kept from another input state: each must prove its input lines

    def open(self) -> int:
        """Keep parts made under the same state (returns how many chunks are done); otherwise start afresh."""
        state_path = self.folder / STATE_FILE
        try:
            previous = json.loads(state_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            previous = None
        self.verify = previous != self.state
        if self.verify and isinstance(previous, dict) and _same_work(previous, self.state):
            write_json_atomic(self.state, state_path)
        elif self.verify:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            write_json_atomic(self.state, state_path)
        return len(list(self.folder.glob("chunk_*.done.json")))

    def _data(self, index: int) -> Path:
        return self.folder / f"chunk_{index:06d}.jsonl"

    def _marker(self, index: int) -> Path:
        return self.folder / f"chunk_{index:06d}.done.json"

    def done(self, index: int) -> dict[str, Any] | None:
        """The recorded counts of chunk ``index`` when it is complete, else None."""
        try:
            return orjson.loads(self._marker(index).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None

    def write(self, index: int, frame: pd.DataFrame | bytes, rejects: list[Reject], counts: dict[str, Any]) -> None:
        """Store a finished chunk (its rows, or their JSON lines): data first, then the marker that makes it count."""
        write_bytes_atomic(frame if isinstance(frame, bytes) else frame_to_jsonl(frame), self._data(index))
        marker = {**counts, "rejects": [r.to_dict() for r in rejects]}  # a row record per input row: kept compact
        write_bytes_atomic(orjson.dumps(marker, default=str, option=_MARKER_OPTIONS), self._marker(index))

    def data(self, index: int) -> bytes:
        """The stored rows of chunk ``index`` as JSON lines (as they appear in a JSONL step file)."""
        return self._data(index).read_bytes()

    def discard(self, index: int) -> None:
        """Forget chunk ``index`` (a part of an earlier input that this run's input does not have)."""
        self._marker(index).unlink(missing_ok=True)
        self._data(index).unlink(missing_ok=True)

    def indices(self) -> list[int]:
        return sorted(int(p.name[6:12]) for p in self.folder.glob("chunk_*.done.json"))

    def write_lines(self, target: Path) -> None:
        """Join the parts' JSON lines, in chunk order, into ``target`` (atomically), whatever the step file's type."""
        with AtomicTableWriter(target, "jsonl") as writer, writer.raw_handle() as handle:
            for index in self.indices():
                with self._data(index).open("rb") as part:
                    shutil.copyfileobj(part, handle)

    def iter_frames(self) -> Iterator[pd.DataFrame]:
        for index in self.indices():
            for chunk in iter_jsonl(self._data(index), chunk_size=1 << 30):
                yield chunk.frame

    def assemble(self, table_type: str) -> None:
        """Join the parts, in chunk order, into the step file (atomically)."""
        with AtomicTableWriter(self.step_file, table_type) as writer:
            if table_type == "jsonl":
                with writer.raw_handle() as handle:
                    for index in self.indices():
                        with self._data(index).open("rb") as part:
                            shutil.copyfileobj(part, handle)
            elif table_type == "csv":
                # One header for the whole file: the union of every chunk's columns, in first-seen order.
                columns = list(dict.fromkeys(c for frame in self.iter_frames() for c in frame.columns))
                for frame in self.iter_frames():
                    writer.append(frame.reindex(columns=columns))
            else:
                for frame in self.iter_frames():
                    writer.append(frame)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _same_work(previous: dict[str, Any], state: dict[str, Any]) -> bool:
    """Parts made by the same operator fingerprint and chunk size (their input is checked per chunk)."""
    return all(previous.get(k) == state.get(k) for k in ("fingerprint", "chunk_size"))
