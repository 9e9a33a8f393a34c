"""Training-ready shards with the images inside: ``--format parquet`` and ``--format webdataset``.

Both hold LLaMA-Factory's ShareGPT turns (``conversations``: ``[{"from": "human"|"gpt", "value"}]``,
one ``<image>`` per image opening the first question) and the image bytes themselves, so the folder
trains wherever it is copied (no paths to break).

* ``parquet`` -> ``OUT/data/train-00000-of-0000N.parquet``: columns ``id``, ``conversations``, ``images``
  (a list of ``{"bytes", "path"}``), with the ``datasets`` features in the file metadata, so
  ``datasets.load_dataset("parquet", data_dir=OUT/data)`` gives PIL images (``Sequence(Image())``), plus
  ``OUT/dataset_info.json`` registering it for LLaMA-Factory (``--dataset_dir OUT --dataset dataflow_mm``).
* ``webdataset`` -> ``OUT/webdataset/shard-000000.tar``...: per sample ``{key}.json`` (``id``,
  ``conversations``, ``images``: its member names) and ``{key}.jpg`` (the first image; further ones
  ``{key}.img1.jpg``...), the key being the sample's number (``000000042``) so it is unique and dot-free;
  ``webdataset.WebDataset("OUT/webdataset/shard-{000000..00000N}.tar")`` reads them.

A shard closes at ``max_samples`` samples or ``max_bytes`` of image and text bytes, whichever comes first.
Shards are written as temp files and renamed into place only once every shard is complete, replacing
the shards of an earlier export of the same format (an interrupted export leaves the earlier one whole);
``export_run`` refuses to replace earlier shards unless ``--overwrite`` (``existing_shards``), and
``dataset_info.json`` is merged, never replaced (``export.targets``).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataflow_mm.common.errors import UserError
from dataflow_mm.export.samples import Sample
from dataflow_mm.storage.atomic import write_bytes_atomic

SHARD_FORMATS = ("parquet", "webdataset")
DEFAULT_MAX_SAMPLES = 10_000
DEFAULT_MAX_MB = 512.0
PARQUET_DIR = "data"
WEBDATASET_DIR = "webdataset"
ROW_GROUP_SAMPLES = 64  # samples per Parquet row group: what is held in memory at once
DATASET_NAME = "dataflow_mm"
_TMP = ".tmp-"


@dataclass(frozen=True)
class ShardOptions:
    """When a shard closes: after ``max_samples`` samples or ``max_bytes`` bytes (images plus text)."""

    max_samples: int = DEFAULT_MAX_SAMPLES
    max_bytes: int = int(DEFAULT_MAX_MB * 1024 * 1024)

    def __post_init__(self) -> None:
        if self.max_samples < 1 or self.max_bytes < 1:
            raise UserError(f"shard limits must be positive (max_samples={self.max_samples}, bytes={self.max_bytes})")


@dataclass
class _Encoded:
    """One sample as shard content: its record and its images' (name, bytes)."""

    id: str
    conversations: list[dict[str, str]]
    images: list[tuple[str, bytes]]

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.images) + len(json.dumps(self.conversations))


Turns = Callable[[Sample], list[dict[str, str]]]  # a sample's ShareGPT turns (export.formats writes them)


def _encoded(sample: Sample, turns: Turns) -> _Encoded:
    from dataflow_mm.storage.media_bytes import suffix_of

    images = []
    for path in sample.images:
        data = Path(path).read_bytes()
        suffix = Path(path).suffix.lower() or suffix_of(data)
        images.append((f"{Path(path).stem}{suffix}", data))
    return _Encoded(sample.id, turns(sample), images)


def _fits(count: int, size: int, more: int, options: ShardOptions) -> bool:
    return count < options.max_samples and size + more <= options.max_bytes


def _grouped(samples: Iterable[Sample], turns: Turns, options: ShardOptions) -> Iterator[Iterator[_Encoded]]:
    """The samples cut into shards: an iterator per shard, each consumed before the next is asked for."""
    source = (_encoded(s, turns) for s in samples)
    pending = next(source, None)

    def shard() -> Iterator[_Encoded]:
        nonlocal pending
        count = size = 0
        while pending is not None and (count == 0 or _fits(count, size, pending.size, options)):
            item, pending = pending, None
            count, size = count + 1, size + item.size
            yield item
            pending = next(source, None)

    while pending is not None:
        yield shard()


# -- Parquet ------------------------------------------------------------------------------------
_STRING = {"dtype": "string", "_type": "Value"}
HF_FEATURES = {
    "id": _STRING,
    "conversations": [{"from": _STRING, "value": _STRING}],
    "images": [{"_type": "Image"}],
}


def _parquet_schema() -> Any:
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("conversations", pa.list_(turn)), ("images", pa.list_(image))])
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})


def _write_parquet_shard(items: Iterator[_Encoded], target: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, count, batch = _parquet_schema(), 0, []

    def flush(writer: Any) -> None:
        rows = {
            "id": [i.id for i in batch],
            "conversations": [i.conversations for i in batch],
            "images": [[{"bytes": data, "path": name} for name, data in i.images] for i in batch],
        }
        writer.write_table(pa.Table.from_pydict(rows, schema=schema))
        batch.clear()

    with pq.ParquetWriter(target, schema) as writer:
        for item in items:
            batch.append(item)
            count += 1
            if len(batch) >= ROW_GROUP_SAMPLES:
                flush(writer)
        if batch:
            flush(writer)
    return count


# -- WebDataset ---------------------------------------------------------------------------------
def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _write_webdataset_shard(items: Iterator[_Encoded], target: Path, first_index: int) -> int:
    count = 0
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tar:
        for item in items:
            key = f"{first_index + count:09d}"
            members = []
            for number, (name, data) in enumerate(item.images):
                suffix = name.rsplit(".", 1)[-1] if "." in name else "jpg"
                member = f"{key}.{suffix}" if number == 0 else f"{key}.img{number}.{suffix}"
                members.append((member, data))
            record = {"id": item.id, "conversations": item.conversations, "images": [m for m, _ in members]}
            _add_member(tar, f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
            for member, data in members:
                _add_member(tar, member, data)
            count += 1
    return count


# -- both ---------------------------------------------------------------------------------------
def shard_folder(out_dir: Path, fmt: str) -> Path:
    return out_dir / (PARQUET_DIR if fmt == "parquet" else WEBDATASET_DIR)


def existing_shards(out_dir: Path, fmt: str) -> list[Path]:
    """The shards an earlier export of ``fmt`` left in ``out_dir`` (replaced only with ``--overwrite``)."""
    pattern = "train-*-of-*.parquet" if fmt == "parquet" else "shard-*.tar"
    return sorted(shard_folder(out_dir, fmt).glob(pattern))


def write_shards(
    samples: Iterable[Sample],
    fmt: str,
    out_dir: Path,
    turns: Turns,
    options: ShardOptions | None = None,
    dataset_name: str = DATASET_NAME,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``samples`` as ``fmt`` shards under ``out_dir`` (see the module docstring); the files written.

    ``turns`` gives a sample's ShareGPT turns (``export.formats`` passes its own, so both layouts agree)."""
    options = options or ShardOptions()
    folder = shard_folder(out_dir, fmt)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{_TMP}*"):  # an interrupted export's temps
        stale.unlink()
    temps: list[Path] = []
    written = 0
    try:
        for items in _grouped(samples, turns, options):
            temp = folder / f"{_TMP}{len(temps):06d}"
            temps.append(temp)
            if fmt == "parquet":
                written += _write_parquet_shard(items, temp)
            else:
                written += _write_webdataset_shard(items, temp, written)
        finals = _final_names(fmt, len(temps), folder)
        for old in folder.glob("train-*-of-*.parquet" if fmt == "parquet" else "shard-*.tar"):
            if old not in finals:
                old.unlink()
        for temp, final in zip(temps, finals, strict=True):
            temp.replace(final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    files = _final_names(fmt, len(temps), folder)
    if fmt == "parquet":
        files.append(write_dataset_info(out_dir, dataset_name, overwrite))
    return files


def _final_names(fmt: str, count: int, folder: Path) -> list[Path]:
    if fmt == "parquet":
        return [folder / f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    return [folder / f"shard-{i:06d}.tar" for i in range(count)]


def webdataset_pattern(count: int) -> str:
    """The brace pattern naming ``count`` WebDataset shards (``shard-{000000..000003}.tar``)."""
    return f"shard-{{000000..{max(count - 1, 0):06d}}}.tar"


def parquet_entry() -> dict[str, Any]:
    """The ``dataset_info.json`` entry of the Parquet shards (ShareGPT columns, the ``data`` folder)."""
    return {
        "file_name": PARQUET_DIR,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images"},
    }


def write_dataset_info(out_dir: Path, dataset_name: str = DATASET_NAME, overwrite: bool = False) -> Path:
    """``dataset_info.json`` registering the Parquet shards for LLaMA-Factory, merged into an existing one
    (``export.targets.merged_dataset_info``: every other entry stays)."""
    from dataflow_mm.export.targets import merged_dataset_info  # targets sits beside formats, above shards

    path = out_dir / "dataset_info.json"
    info = merged_dataset_info(path, dataset_name, parquet_entry(), overwrite)
    return write_bytes_atomic(json.dumps(info, indent=2, ensure_ascii=False).encode("utf-8"), path)
