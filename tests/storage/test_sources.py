"""``first_entry_file`` as a folder of images or a Hugging Face dataset (a hub cache laid out offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.sources import is_hf_dataset, parse_hf_source
from tests.support.user_inputs import image_bytes, lay_out_hub_dataset, write_hf_image_shard


def photo_folder(root: Path) -> list[Path]:
    """Nested subfolders, mixed extensions, a non-image file and a hidden file."""
    images = []
    for relative, fmt in [("b.png", "PNG"), ("a/2.jpg", "JPEG"), ("a/10.JPEG", "JPEG"), ("a/deep/x.webp", "WEBP")]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), (10, 120, 200)).save(path, format=fmt)
        images.append(path)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    return images


def test_a_folder_of_images_becomes_a_sorted_table_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photo_folder(tmp_path / "photos")
    storage = FileStorage(str(tmp_path / "photos"), cache_path=str(tmp_path / "cache"), file_name_prefix="run")
    with caplog.at_level("INFO"):
        frame = storage.step().read()
    names = [Path(p).relative_to((tmp_path / "photos").resolve()).as_posix() for p in frame["image"]]
    assert names == ["a/10.JPEG", "a/2.jpg", "a/deep/x.webp", "b.png"]
    assert storage.input_path == tmp_path / "cache" / "run_input_from_folder.jsonl"
    assert "4 image(s) found" in caplog.text and "1 other file(s) skipped" in caplog.text
    before = storage.input_path.stat().st_mtime_ns
    again = FileStorage(str(tmp_path / "photos"), cache_path=str(tmp_path / "cache"), file_name_prefix="run")
    assert again.step().input_path.stat().st_mtime_ns == before  # same folder, same file: resume holds


def test_a_folder_without_images_or_named_like_a_table_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(StorageError, match="folder without image files"):
        FileStorage(str(tmp_path / "empty"), cache_path=str(tmp_path / "c")).step().read()
    (tmp_path / "t.jsonl").mkdir()
    with pytest.raises(StorageError, match="is a directory"):
        FileStorage(str(tmp_path / "t.jsonl"), cache_path=str(tmp_path / "c")).step().read()


def hub_dataset(hub: Path, tmp_path: Path) -> None:
    files = {}
    for index, colors in enumerate([[(255, 0, 0), (0, 255, 0)], [(0, 0, 255)]]):
        shard = tmp_path / f"shard{index}.parquet"
        images = [
            {"bytes": image_bytes(Image.new("RGB", (16, 16), c)), "path": f"{index}_{i}.jpg"}
            for i, c in enumerate(colors)
        ]
        write_hf_image_shard(shard, {"image": images, "label": list(range(len(colors)))}, ["image"])
        files[f"data/train-0000{index}-of-00002.parquet"] = shard.read_bytes()
    files["README.md"] = b"---\nlicense: mit\n---\n"
    lay_out_hub_dataset(hub, "someone/photos", files)


def test_a_hugging_face_dataset_is_read_from_the_offline_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    hub_dataset(hub, tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (repo,) = huggingface_hub.scan_cache_dir(hub).repos  # huggingface_hub reads the layout as its own
    assert repo.repo_id == "someone/photos" and repo.repo_type == "dataset"

    for source in ("hf://datasets/someone/photos", "someone/photos"):
        storage = FileStorage(source, cache_path=str(tmp_path / "cache"), file_name_prefix="hf")
        frame = storage.step().read()
        assert len(frame) == 3 and list(frame["label"]) == [0, 1, 0]  # both shards, in order
        assert storage.input_path == tmp_path / "cache" / "hf_input_from_hf.parquet"
    one = FileStorage("hf://datasets/someone/photos/data/train-00001-*", cache_path=str(tmp_path / "cache"))
    assert len(one.step().read()) == 1 and one.input_path.name == "train-00001-of-00002.parquet"

    with pytest.raises(StorageError, match=r"'someone/elsewhere' is not in the local cache .* offline"):
        FileStorage("hf://datasets/someone/elsewhere", cache_path=str(tmp_path / "cache")).step().read()
    with pytest.raises(StorageError, match="no local file or folder 'someone/elsewhere'"):
        FileStorage("someone/elsewhere", cache_path=str(tmp_path / "cache")).step().read()


def test_what_counts_as_a_hugging_face_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_hf_dataset("hf://datasets/a/b") and is_hf_dataset("owner/name")
    assert not is_hf_dataset("data/table.jsonl") and not is_hf_dataset("./data/x") and not is_hf_dataset("/abs/x")
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "folder").mkdir()
    assert not is_hf_dataset("local/folder")  # a local path wins
    assert parse_hf_source("hf://datasets/a/b@v1/data/*.parquet") == ("a/b", "v1", "data/*.parquet")
    assert json.dumps(parse_hf_source("a/b")) == '["a/b", null, null]'
