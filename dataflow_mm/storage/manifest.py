"""Step manifests: what produced a step file, so a re-run can tell whether it is still valid.

A manifest sits beside its step file (``<step file>.manifest.json``). A step is complete when
its file and manifest both exist, the manifest's fingerprint equals the operator's current one
(class, parameters, keys, model), the input's content hash is unchanged, the step file's
content hash still matches what was written, and every media file the step read is unchanged
(``media_stamps``). Completed work is recorded, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from dataflow_mm.storage.atomic import write_bytes_atomic
from dataflow_mm.storage.formats import write_json_atomic
from dataflow_mm.storage.hashing import file_sha256
from dataflow_mm.storage.media_stamps import changed_media

MANIFEST_SUFFIX = ".manifest.json"


def fingerprint(data: Any) -> str:
    """A stable hash of JSON-able parameters (keys sorted; unknown objects by their repr)."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def manifest_path(step_file: str | os.PathLike) -> Path:
    return Path(f"{step_file}{MANIFEST_SUFFIX}")


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
    media: dict[str, Any] = field(default_factory=dict)  # the media files read: path -> stamp (media_stamps)
    # sha256 of each extra output as written, so a skipped step can tell a missing or stale copy.
    extra_output_sha256: dict[str, str] = field(default_factory=dict)

    def save(self, step_file: str | os.PathLike) -> Path:
        """Write the manifest atomically. Its ``media`` holds a stamp per file the step read (one per row
        for a step that reads drawn images), so it is encoded by orjson in one pass, without the deep copy
        of ``asdict`` or the stdlib's indented encoder (a Python string per token): at 100k rows those made
        the step's end the run's memory peak."""
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
        )
