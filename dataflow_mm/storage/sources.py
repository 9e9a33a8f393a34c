"""What ``first_entry_file`` may name besides a table file: a folder of images or a Hugging Face dataset.

* **A folder of images** (``./photos``): every image file under it, recursively, sorted by relative
  path, becomes one row ``{"image": "<absolute path>"}`` of ``{cache_path}/{prefix}_input_from_folder.jsonl``;
  the log says how many images were found and how many other files were skipped. A folder whose
  own name ends in a table suffix (``x.jsonl/``, ``x.parquet/``) is taken for a misplaced table and
  refused, as before.
* **A Hugging Face dataset**: ``hf://datasets/<owner>/<name>[@<revision>][/<glob>]`` or a bare
  ``<owner>/<name>`` that is not a local path. Its Parquet shards (all of them, or those matching
  the glob, e.g. ``data/train-*.parquet``) are fetched with ``huggingface_hub.snapshot_download``,
  which honours ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``. One shard is read in place; several
  are joined into ``{cache_path}/{prefix}_input_from_hf.parquet``. Offline and not cached, or not
  reachable, is one clear ``StorageError`` (exit 2 in the scripts).

Anything else is returned unchanged (a table path, checked later by the reader).
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from dataflow_mm.errors import StorageError
from dataflow_mm.logger import get_logger
from dataflow_mm.storage.atomic import write_bytes_atomic

log = get_logger("storage.sources")

FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMN = "image"
HF_PREFIX = "hf://datasets/"
_TABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
_BARE_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def is_hf_dataset(source: str) -> bool:
    """True for ``hf://datasets/...`` and for a bare ``owner/name`` that is neither a local path nor a table name."""
    if source.startswith(HF_PREFIX):
        return True
    return (
        bool(_BARE_REPO_ID.match(source))
        and not source.lower().endswith(_TABLE_SUFFIXES)
        and not Path(source).expanduser().exists()
    )


def resolve_first_entry(source: str, cache_path: str, prefix: str) -> Path:
    """The table file that step 0 reads for ``source`` (see the module docstring)."""
    if is_hf_dataset(source):
        return hf_dataset_table(source, Path(cache_path), prefix)
    path = Path(source).expanduser()
    if path.is_dir() and not path.name.lower().endswith(_TABLE_SUFFIXES):
        return folder_table(path, Path(cache_path) / f"{prefix}_input_from_folder.jsonl")
    return path


# -- a folder of images ------------------------------------------------------------------------------
# What ``datasets.Dataset.save_to_disk`` (state.json) and ``DatasetDict.save_to_disk`` (dataset_dict.json) leave.
SAVE_TO_DISK_MARKERS = ("state.json", "dataset_dict.json")


def folder_table(folder: Path, target: Path) -> Path:
    """Write the table of every image under ``folder`` (recursive, sorted) to ``target`` and return it."""
    root = folder.resolve()
    images, others = [], 0
    for path in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() in FOLDER_IMAGE_SUFFIXES:
            images.append(path)
        else:
            others += 1
    if not images and any((root / name).is_file() for name in SAVE_TO_DISK_MARKERS):
        raise StorageError(
            f"first_entry_file '{folder}' is a Hugging Face datasets folder (written by save_to_disk), not a table: "
            f"convert it with python -c \"import datasets; datasets.load_from_disk('{folder}')"
            f"{'' if (root / 'state.json').is_file() else '[SPLIT]'}.to_parquet('table.parquet')\" "
            "and pass table.parquet"
        )
    if not images:
        raise StorageError(
            f"first_entry_file '{folder}' is a folder without image files "
            f"({', '.join(FOLDER_IMAGE_SUFFIXES)}; {others} other file(s) found)"
        )
    text = "".join(json.dumps({IMAGE_COLUMN: str(p)}, ensure_ascii=False) + "\n" for p in images)
    data = text.encode("utf-8")
    if not target.is_file() or target.read_bytes() != data:  # unchanged folder: same file, so resume holds
        write_bytes_atomic(data, target)
    log.info(
        f"first_entry_file: {len(images)} image(s) found under '{folder}' (recursive, sorted; "
        f"{others} other file(s) skipped) -> {target}"
    )
    return target


# -- a Hugging Face dataset ------------------------------------------------------------------------
def parse_hf_source(source: str) -> tuple[str, str | None, str | None]:
    """``(repo_id, revision, glob)`` of ``hf://datasets/owner/name[@rev][/glob]`` or ``owner/name``."""
    rest = source[len(HF_PREFIX) :] if source.startswith(HF_PREFIX) else source
    parts = rest.strip("/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise StorageError(f"'{source}' is not a Hugging Face dataset path: use hf://datasets/<owner>/<name>[/<glob>]")
    name, _, revision = parts[1].partition("@")
    pattern = "/".join(parts[2:]) or None
    return f"{parts[0]}/{name}", revision or None, pattern


def _fetch_snapshot(repo_id: str, revision: str | None, pattern: str | None, source: str) -> Path:
    from dataflow_mm.deps import require

    hub = require("huggingface_hub", "hf")
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    patterns = [pattern] if pattern else ["*.parquet", "**/*.parquet"]
    try:
        folder = hub.snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        offline = " and the hub is offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
        local = "" if source.startswith(HF_PREFIX) else f" (and there is no local file or folder '{source}')"
        raise StorageError(
            f"Hugging Face dataset '{repo_id}' is not in the local cache ({constants.HF_HUB_CACHE}){offline}{local}: "
            f"download it once with `hf download --repo-type dataset {repo_id}` where the hub is reachable"
        ) from exc
    except Exception as exc:  # unknown repo, gated, network: one line naming the dataset
        raise StorageError(f"cannot fetch Hugging Face dataset '{repo_id}': {type(exc).__name__}: {exc}") from exc
    return Path(folder)


def hf_dataset_table(source: str, cache_path: Path, prefix: str) -> Path:
    """The Parquet table of a Hugging Face dataset's shards (one shard in place, several joined)."""
    repo_id, revision, pattern = parse_hf_source(source)
    folder = _fetch_snapshot(repo_id, revision, pattern, source)
    shards = sorted(
        p
        for p in folder.rglob("*.parquet")
        if pattern is None or fnmatch.fnmatch(p.relative_to(folder).as_posix(), pattern)
    )
    if not shards:
        wanted = f" matching '{pattern}'" if pattern else ""
        raise StorageError(f"Hugging Face dataset '{repo_id}' has no Parquet shards{wanted} in {folder}")
    names = [p.relative_to(folder).as_posix() for p in shards]
    log.info(f"first_entry_file: Hugging Face dataset '{repo_id}': {len(shards)} Parquet shard(s): {names[:5]}")
    if len(shards) == 1:
        return shards[0]
    return _joined_shards(shards, cache_path / f"{prefix}_input_from_hf.parquet")


def _joined_shards(shards: list[Path], target: Path) -> Path:
    """Several shards as one Parquet file (rewritten only when the shards changed)."""
    import pyarrow.parquet as pq

    stamp = [[str(p.resolve()), p.stat().st_size] for p in shards]
    stamp_file = target.with_name(f".{target.name}.shards.json")
    try:
        if target.is_file() and json.loads(stamp_file.read_text(encoding="utf-8")) == stamp:
            return target
    except (OSError, json.JSONDecodeError):
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    schema = pq.read_schema(shards[0])
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for shard in shards:
                table = pq.read_table(shard)
                if not table.schema.equals(schema):
                    raise StorageError(f"Parquet shard '{shard.name}' has another schema than '{shards[0].name}'")
                writer.write_table(table)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    write_bytes_atomic(json.dumps(stamp).encode("utf-8"), stamp_file)
    return target
