"""A ``datasets.save_to_disk`` folder given as ``first_entry_file`` is named for what it is, with a conversion
that works (issue 24, "smaller": it used to say "a folder without image files")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dataflow_mm.errors import StorageError
from dataflow_mm.storage import FileStorage
from dataflow_mm.storage.formats import read_table
from dataflow_mm.testing.sample_data import write_region_caption_table

datasets = pytest.importorskip("datasets")


def rows(tmp_path: Path) -> dict[str, list]:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    frame = read_table(table).frame
    return {"image": frame["image"].tolist(), "bbox": frame["bbox"].tolist()}


def first_entry_error(folder: Path, cache: Path) -> str:
    with pytest.raises(StorageError) as info:
        _ = FileStorage(str(folder), cache_path=str(cache)).first_entry_path
    return str(info.value)


def test_a_saved_dataset_is_named_and_its_conversion_works(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(rows(tmp_path)).save_to_disk(str(saved))
    message = first_entry_error(saved, tmp_path / "cache")
    assert "Hugging Face datasets folder" in message and "save_to_disk" in message and "\n" not in message
    command = message.split('python -c "', 1)[1].split('"', 1)[0]
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True, timeout=300)
    converted = FileStorage(str(tmp_path / "table.parquet"), cache_path=str(tmp_path / "cache")).read()
    assert len(converted) == 2 and list(converted.columns) == ["image", "bbox"]


def test_a_saved_dataset_dict_asks_for_a_split(tmp_path: Path) -> None:
    saved = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(tmp_path))}).save_to_disk(str(saved))
    message = first_entry_error(saved, tmp_path / "cache")
    assert "Hugging Face datasets folder" in message and "[SPLIT]" in message


def test_a_folder_of_other_files_keeps_its_message(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert "a folder without image files" in first_entry_error(tmp_path / "notes", tmp_path / "cache")
