"""Step manifests: what produced a step file, so a re-run can tell whether it is still valid.

A manifest sits beside its step file (``<step file>.manifest.json``). A step is complete when
its file and manifest both exist, the manifest's fingerprint equals the operator's current one
(class, parameters, keys, model), the input's content hash is unchanged, the step file's
content hash still matches what was written, and every media file the step read is unchanged
(``media_stamps``). Completed work is recorded, never guessed.

The media stamps (one per file the step read: one per row for a step that reads drawn images) are
kept in their own file beside the manifest (``<step file>.media.ndjson``, one ``[path, stamp]`` per
line, its sha256 in the manifest), written and checked a line at a time: the manifest stays small
however many rows the step has, and loading it (resume checks, the report) never holds the stamps.
Manifests written before that keep their stamps inline (``media``) and are still honoured.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from dataflow_mm.storage.atomic import write_bytes_atomic, write_json_lines_atomic
from dataflow_mm.storage.hashing import file_sha256
from dataflow_mm.storage.media_stamps import changed_media
from dataflow_mm.storage.table_writer import write_json_atomic

MANIFEST_SUFFIX = ".manifest.json"
MEDIA_SUFFIX = ".media.ndjson"  # not ending in a table type's suffix: never taken for a step file
_STAMPS_PER_CHECK = 4096


def fingerprint(data: Any) -> str:
    """A stable hash of JSON-able parameters (keys sorted; unknown objects by their repr)."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def manifest_path(step_file: str | os.PathLike) -> Path:
    return Path(f"{step_file}{MANIFEST_SUFFIX}")


def media_path(step_file: str | os.PathLike) -> Path:
    """Where the media stamps of ``step_file`` are kept (see the module docstring)."""
    return Path(f"{step_file}{MEDIA_SUFFIX}")


def write_media_stamps(step_file: str | os.PathLike, stamps: Iterable[dict[str, Any]]) -> str:
    """Write the stamps (dicts of path -> stamp, e.g. one per chunk marker) a line at a time, atomically;
    return the file's sha256, or "" when there were none (and no file is left)."""
    lines = ([path, item] for chunk in stamps for path, item in chunk.items())
    return write_json_lines_atomic(media_path(step_file), lines, drop_if_empty=True)


def _stamp_lines(step_file: str | os.PathLike) -> Iterator[tuple[bytes, str, Any]]:
    with media_path(step_file).open("rb") as handle:
        for line in handle:
            path, item = orjson.loads(line)
            yield line, path, item


def iter_media_stamps(step_file: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """``(path, stamp)`` of every media file ``step_file``'s step read, a line at a time."""
    for _, path, item in _stamp_lines(step_file):
        yield path, item


def media_unchanged(step_file: str | os.PathLike, sha256: str) -> bool:
    """Whether every stamp in ``step_file``'s media file still holds (and the file is the one recorded)."""
    digest = hashlib.sha256()
    batch: dict[str, Any] = {}
    try:
        for line, path, item in _stamp_lines(step_file):
            digest.update(line)
            batch[path] = item
            if len(batch) >= _STAMPS_PER_CHECK:
                if changed_media(batch):
                    return False
                batch = {}
    except (OSError, ValueError):  # missing, unreadable or not the lines written (orjson's error is a ValueError)
        return False
    return digest.hexdigest() == sha256 and not changed_media(batch)


@dataclass
class StepManifest:
    """The record written beside a step file."""

    operator: str
    fingerprint: str
    params: dict[str, Any]
    input_path: str
    input_sha256: str
    output_sha256: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra_outputs: list[str] = field(default_factory=list)
    media: dict[str, Any] = field(default_factory=dict)  # inline stamps: manifests written before media_sha256
    media_sha256: str = ""  # sha256 of the step's media file (its stamps, see the module docstring); "": none
    # sha256 of each extra output as written, so a skipped step can tell a missing or stale copy.
    extra_output_sha256: dict[str, str] = field(default_factory=dict)
    # The run's working folder: relative paths in the rows (``./data/x.jpg``) resolve against it later
    # (``dataflowmm export`` run from another folder). "": written before it was recorded.
    working_dir: str = ""
    # Who wrote the step (see storage.step_owner): a step file of another writer is never replaced.
    writer: dict[str, Any] = field(default_factory=dict)
    # sha256 of the step's row index and of its output lines (``storage.row_index``); "": none (older caches)
    rows_sha256: str = ""
    lines_sha256: str = ""

    def save(self, step_file: str | os.PathLike) -> Path:
        """Write the manifest atomically (encoded by orjson in one pass; the stdlib for ints beyond 64 bits)."""
        fields_ = {item.name: getattr(self, item.name) for item in fields(self)}
        try:
            data = orjson.dumps(fields_, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
        except (orjson.JSONEncodeError, TypeError):  # an int beyond 64 bits: the stdlib writes it exactly
            return write_json_atomic(asdict(self), manifest_path(step_file))
        return write_bytes_atomic(data, manifest_path(step_file))

    @classmethod
    def load(cls, step_file: str | os.PathLike) -> StepManifest | None:
        path = manifest_path(step_file)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def matches(self, other_fingerprint: str, input_sha256: str, step_file: str | os.PathLike) -> bool:
        """True when this manifest proves ``step_file`` is the output the operator would produce now."""
        step_file = Path(step_file)
        return (
            self.fingerprint == other_fingerprint
            and self.input_sha256 == input_sha256
            and step_file.is_file()
            and file_sha256(step_file) == self.output_sha256
            and not changed_media(self.media)
            and (not self.media_sha256 or media_unchanged(step_file, self.media_sha256))
        )
