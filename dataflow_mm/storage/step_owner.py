"""Whose a step file is: a step file is replaced only by the run arrangement that wrote it.

Step files are named by cache path, prefix and number alone, so two arrangements can land on one
name: another pipeline with the same cache and prefix (region captions, then Img-Diff with
``--file_name_prefix shared``), or the same pipeline fed one of its own step files as input (its
steps then number on from that file, over the earlier run's later steps). Each manifest records its
writer (``StepManifest.writer``): the pipeline's class name (when a pipeline ran it) and the step the
storage's numbering started from (``chain_start``, its ``step_offset``) with that storage's first file.
A step file whose writer differs is never replaced: the run stops before any work (exit 2) and says how
to keep both (another prefix or cache). Manifests written before writers were recorded claim nothing.

Also here: the files a cache writes (``cache_file_kind``), which no extra output may name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from dataflow_mm.common.errors import StorageError
from dataflow_mm.common.secrets import unsigned_url
from dataflow_mm.storage.lock import LOCK_FILE_NAME
from dataflow_mm.storage.manifest import MANIFEST_SUFFIX, MEDIA_SUFFIX, StepManifest

PIPELINE_KEY = "pipeline"
CHAIN_START_KEY = "chain_start"
FIRST_ENTRY_KEY = "first_entry"

_STEP_FILE = re.compile(r".+_step\d+\.(jsonl|json|csv|parquet)$")
_CACHE_FOLDERS = ("logs", "media")  # the run logs and the media cache (see run_log, storage.media)


def writer_of(storage: Any) -> dict[str, Any]:
    """The writer a storage's steps record: its pipeline (or None), its numbering's start and first file."""
    return {
        PIPELINE_KEY: getattr(storage, "pipeline_name", None),
        CHAIN_START_KEY: int(getattr(storage, "step_offset", 0) or 0),
        FIRST_ENTRY_KEY: unsigned_url(str(getattr(storage, "first_entry_file_name", ""))),
    }


def _started(writer: dict[str, Any]) -> str:
    start = writer.get(CHAIN_START_KEY, 0)
    first = writer.get(FIRST_ENTRY_KEY) or "?"
    return f"from '{first}'" if not start else f"after step {start} (from '{first}')"


def foreign_step(step_file: str | os.PathLike, writer: dict[str, Any]) -> str | None:
    """Why ``step_file`` belongs to another writer than ``writer`` (one line), or None when it may be replaced."""
    manifest = StepManifest.load(step_file)
    theirs = manifest.writer if manifest is not None else None
    if not theirs:
        return None
    fix = "use another --file_name_prefix or --cache_path (or remove that run's step files)"
    mine, other = writer.get(PIPELINE_KEY), theirs.get(PIPELINE_KEY)
    if mine and other and mine != other:
        return (
            f"step file '{step_file}' was written by pipeline {other} (operator {manifest.operator}), and this run "
            f"is {mine}: a step file of another pipeline is never replaced; {fix}"
        )
    if int(theirs.get(CHAIN_START_KEY, 0) or 0) != writer.get(CHAIN_START_KEY, 0):
        return (
            f"step file '{step_file}' holds the output of a run whose steps started {_started(theirs)} "
            f"(operator {manifest.operator}), and this run's steps start {_started(writer)}: it would be "
            f"replaced; {fix}"
        )
    return None


def check_step_owner(storage: Any) -> None:
    """``StorageError`` when the storage's current step file belongs to another writer (see ``foreign_step``)."""
    problem = foreign_step(storage.output_path, writer_of(storage))
    if problem:
        raise StorageError(problem)


def cache_file_kind(path: str | os.PathLike, cache_path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is a file the cache at ``cache_path`` writes (a step file, a manifest, the
    summary, the lock, a run log, ...), else None. An extra output may not be one of them."""
    try:
        target = Path(os.path.realpath(path))
        cache = Path(os.path.realpath(cache_path))
        relative = target.relative_to(cache)
    except ValueError:
        return None
    parts, name = relative.parts, target.name
    if len(parts) > 1:
        if parts[0] in _CACHE_FOLDERS:
            return f"inside the cache's {parts[0]}/ folder"
        if parts[0].startswith(".") and parts[0].endswith(".parts"):
            return "a step's chunk part"
        return None
    if name == LOCK_FILE_NAME:
        return "the cache's lock file"
    if name.endswith(MANIFEST_SUFFIX) or name.endswith(MEDIA_SUFFIX) or name.endswith(".rejects.jsonl"):
        return "a step's manifest, media stamps or rejects file"
    if name.endswith("_summary.json"):
        return "a run summary"
    if name == "report.html":
        return "the run report"
    if _STEP_FILE.match(name) or re.match(
        r".+_input(_from_folder\.jsonl|_from_hf\.parquet|\.dfmm-source\.json)$", name
    ):
        return "a step file"
    return None
