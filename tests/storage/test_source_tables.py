"""Inputs that are not one table file, written by the software users have: ``datasets`` save_to_disk folders
(Dataset and DatasetDict), ``.arrow`` files, WebDataset shards (the ``webdataset`` library's TarWriter and
img2dataset's tar layout), globs and brace patterns of Parquet shards; all streamed in exact chunks."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.formats import iter_table, read_table
from dataflow_mm.storage.media import resolve_media_path
from dataflow_mm.storage.remote import expand_braces, has_pattern, url_path
from dataflow_mm.storage.sources import resolve_first_entry
from tests.support.user_inputs import image_bytes

datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")


def picture(i: int, fmt: str = "JPEG") -> bytes:
    return image_bytes(Image.new("RGB", (24 + i, 16), (i * 20 % 255, 80, 160)), fmt)


def rows_of(source: Path | str, tmp_path: Path, split: str | None = None, chunk_size: int = 4) -> list[list[dict]]:
    table = resolve_first_entry(str(source), str(tmp_path / "cache"), "t", split)
    return [chunk.frame.to_dict(orient="records") for chunk in iter_table(table, chunk_size=chunk_size)]


def image_dataset(n: int, offset: int = 0):
    return datasets.Dataset.from_dict(
        {"id": list(range(offset, offset + n)), "image": [picture(i) for i in range(offset, offset + n)]},
        features=datasets.Features({"id": datasets.Value("int64"), "image": datasets.Image()}),
    )


def test_expand_braces_keeps_zero_padding_and_multiplies_groups() -> None:
    assert expand_braces("s3://b/shard-{000008..000010}.tar") == [
        "s3://b/shard-000008.tar",
        "s3://b/shard-000009.tar",
        "s3://b/shard-000010.tar",
    ]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.parquet") == ["plain.parquet"]


def test_the_query_of_an_http_url_is_not_a_glob_or_part_of_the_file_name() -> None:
    presigned = "https://b.s3.amazonaws.com/part-0.parquet?X-Amz-Signature=ab%2A[1]&X-Amz-Expires=600"
    assert not has_pattern(presigned) and url_path(presigned) == "https://b.s3.amazonaws.com/part-0.parquet"
    assert has_pattern("https://host/part-*.parquet?sig=x") and has_pattern("https://host/shard-{0..3}.tar")
    assert has_pattern("s3://b/what?.parquet") and url_path("s3://b/what?.parquet") == "s3://b/what?.parquet"


def test_a_save_to_disk_folder_streams_in_exact_chunks_with_image_bytes(tmp_path: Path) -> None:
    image_dataset(10).save_to_disk(str(tmp_path / "ds"), max_shard_size="2KB")  # several Arrow shards
    assert len(list((tmp_path / "ds").glob("*.arrow"))) > 1
    chunks = rows_of(tmp_path / "ds", tmp_path, chunk_size=4)
    assert [len(c) for c in chunks] == [4, 4, 2]
    rows = [r for c in chunks for r in c]
    assert [r["id"] for r in rows] == list(range(10))
    for row in rows:
        stored = resolve_media_path(row["image"], cache_dir=tmp_path / "media")
        assert stored.read_bytes() == picture(row["id"])


def test_a_dataset_dict_folder_needs_its_split(tmp_path: Path) -> None:
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": image_dataset(3), "test": image_dataset(2, offset=50)}).save_to_disk(str(folder))
    rows = [r for c in rows_of(folder, tmp_path, split="test") for r in c]
    assert [r["id"] for r in rows] == [50, 51]
    with pytest.raises(StorageError, match=r"DatasetDict folder with splits \['train', 'test'\]: choose one with"):
        rows_of(folder, tmp_path)
    with pytest.raises(StorageError, match="split 'valid' is not one of them"):
        rows_of(folder, tmp_path, split="valid")
    with pytest.raises(StorageError, match="not a DatasetDict folder"):
        rows_of(folder / "train", tmp_path, split="train")
    # a split's own folder is a Dataset folder too
    assert [r["id"] for c in rows_of(folder / "train", tmp_path) for r in c] == [0, 1, 2]


def test_arrow_files_in_both_ipc_layouts(tmp_path: Path) -> None:
    image_dataset(3).save_to_disk(str(tmp_path / "ds"))
    (stream_file,) = (tmp_path / "ds").glob("*.arrow")  # datasets writes the IPC stream layout
    table = pa.table({"id": [7, 8], "image": [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]})
    with pa.ipc.new_file(tmp_path / "file_layout.arrow", table.schema) as writer:
        writer.write_table(table)
    assert [r["id"] for c in rows_of(stream_file, tmp_path) for r in c] == [0, 1, 2]
    assert [r["id"] for c in rows_of(tmp_path / "file_layout.arrow", tmp_path) for r in c] == [7, 8]


def test_webdataset_shards_written_by_the_library_through_a_brace_pattern(tmp_path: Path) -> None:
    for shard in range(3):
        with wds.TarWriter(str(tmp_path / f"shard-{shard:06d}.tar")) as writer:
            for i in range(shard * 3, shard * 3 + 3):
                writer.write({"__key__": f"s{i:04d}", "jpg": picture(i), "json": {"caption": f"c{i}", "n": i}})
    chunks = rows_of(tmp_path / "shard-{000000..000002}.tar", tmp_path, chunk_size=4)
    assert [len(c) for c in chunks] == [4, 4, 1]  # across shard boundaries
    rows = [r for c in chunks for r in c]
    assert [r["__key__"] for r in rows] == [f"s{i:04d}" for i in range(9)]
    assert [r["n"] for r in rows] == list(range(9)) and rows[4]["caption"] == "c4"
    assert rows[4]["__url__"].endswith("shard-000001.tar")
    assert rows[4]["image"] == {"bytes": picture(4), "path": "s0004.jpg"}  # bytes, decoded only when used


def test_img2dataset_layout_with_text_and_a_second_image(tmp_path: Path) -> None:
    shard = tmp_path / "00000.tar"
    members = [
        ("00000/000000000.jpg", picture(0)),
        ("00000/000000000.txt", b"a red square"),
        ("00000/000000000.json", json.dumps({"key": "000000000", "url": "http://x/0.jpg", "width": 24}).encode()),
        ("00000/000000000.seg.png", picture(9, "PNG")),
        ("00000/000000001.jpg", picture(1)),
        ("00000/000000001.json", json.dumps({"key": "000000001", "image": "ignored"}).encode()),
        ("00000/__metadata__.json", b"{}"),
    ]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    first, second = [r for c in rows_of(shard, tmp_path) for r in c]
    assert first["__key__"] == "00000/000000000" and first["key"] == "000000000" and first["width"] == 24
    assert first["txt"] == "a red square" and first["image"]["bytes"] == picture(0)
    assert first["seg.png"]["bytes"] == picture(9, "PNG")
    assert second["image"] == {"bytes": picture(1), "path": "000000001.jpg"}  # the member wins over a field


def test_a_gzipped_shard_streams_too(tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "s.tar.gz"), compress=True) as writer:
        writer.write({"__key__": "only", "png": picture(3, "PNG"), "txt": "words"})
    (row,) = [r for c in rows_of(tmp_path / "s.tar.gz", tmp_path) for r in c]
    assert row["txt"] == "words" and row["image"] == {"bytes": picture(3, "PNG"), "path": "only.png"}


def test_a_truncated_tar_is_one_storage_error(tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "ok.tar")) as writer:
        writer.write({"__key__": "a", "jpg": picture(0) * 50})
    (tmp_path / "bad.tar").write_bytes((tmp_path / "ok.tar").read_bytes()[:700])
    with pytest.raises(StorageError, match=r"bad\.tar"):
        rows_of(tmp_path / "bad.tar", tmp_path)


def test_a_glob_of_parquet_shards_is_one_table_and_a_rewritten_shard_changes_its_identity(tmp_path: Path) -> None:
    for shard in range(3):
        pq.write_table(pa.table({"id": list(range(shard * 5, shard * 5 + 5))}), tmp_path / f"part-{shard}.parquet")
    source = resolve_first_entry(str(tmp_path / "part-*.parquet"), str(tmp_path / "cache"), "t")
    assert [r["id"] for r in read_table(source).frame.to_dict(orient="records")] == list(range(15))
    before = source.read_bytes()
    assert resolve_first_entry(str(tmp_path / "part-*.parquet"), str(tmp_path / "cache"), "t").read_bytes() == before
    pq.write_table(pa.table({"id": list(range(100, 107))}), tmp_path / "part-1.parquet")
    assert resolve_first_entry(str(tmp_path / "part-*.parquet"), str(tmp_path / "cache"), "t").read_bytes() != before
    assert len(read_table(source).frame) == 17
    pq.write_table(pa.table({"id": [1]}), tmp_path / "part-2.parquet")  # rewritten after the listing
    with pytest.raises(StorageError, match=r"part-2\.parquet' changed since the run listed it"):
        read_table(source)
    with pytest.raises(StorageError, match="no file matches"):
        resolve_first_entry(str(tmp_path / "nothing-*.parquet"), str(tmp_path / "cache"), "t")
    (tmp_path / "part-9.csv").write_text("id\n1\n")
    with pytest.raises(StorageError, match=r"shards must all be one of .*found \['.csv', '.parquet'\]"):
        resolve_first_entry(str(tmp_path / "part-*"), str(tmp_path / "cache"), "t")


@pytest.mark.parametrize("cache", ["s3://bucket/cache", "gs://b/c", "hf://datasets/a/b"])
def test_an_object_store_cache_path_is_refused_in_one_line(cache: str) -> None:
    with pytest.raises(StorageError, match="is object storage: the cache must be a folder on a POSIX") as err:
        FileStorage("in.jsonl", cache_path=cache)
    assert "\n" not in str(err.value)


def test_a_protocol_whose_package_is_missing_names_it(tmp_path: Path) -> None:
    import importlib.util

    from dataflow_mm.common.errors import MissingDependencyError

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(MissingDependencyError, match=r"gs:// URLs needs gcsfs.*pip install 'dataflow-mm\[remote\]'"):
        resolve_first_entry("gs://bucket/part-*.parquet", str(tmp_path), "t")
    with pytest.raises(StorageError, match=r"cannot read 'nosuchproto://x/y\.parquet'"):
        resolve_first_entry("nosuchproto://x/y.parquet", str(tmp_path), "t")
