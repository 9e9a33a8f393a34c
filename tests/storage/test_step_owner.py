"""Step files record their writer; a storage used without a pipeline is held to it too (issue 24 items 3, 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflow_mm import FileStorage, ImageBboxGenerator, PromptedVQAGenerator
from dataflow_mm.errors import StorageError
from dataflow_mm.storage.step_owner import cache_file_kind
from dataflow_mm.testing.fake_serving import FakeVLMServing
from dataflow_mm.testing.sample_data import write_region_caption_table


def two_steps(first_entry: Path, cache: Path) -> None:
    storage = FileStorage(str(first_entry), cache_path=str(cache), file_name_prefix="rc")
    ImageBboxGenerator().run(storage=storage.step(), input_image_key="image", input_bbox_key="bbox")
    PromptedVQAGenerator(serving=FakeVLMServing()).run(
        storage=storage.step(), input_image_key="image_with_bbox", input_prompt_key="prompt"
    )


def test_the_manifest_records_the_writer(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1)
    two_steps(table, tmp_path / "cache")
    writer = json.loads((tmp_path / "cache" / "rc_step2.jsonl.manifest.json").read_text())["writer"]
    assert writer == {"pipeline": None, "chain_start": 0, "first_entry": str(table)}


def test_a_storage_starting_at_its_own_step_file_never_replaces_that_runs_next_step(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    cache = tmp_path / "cache"
    two_steps(table, cache)
    before = (cache / "rc_step2.jsonl").read_bytes()
    storage = FileStorage(str(cache / "rc_step1.jsonl"), cache_path=str(cache), file_name_prefix="rc")
    with pytest.raises(StorageError, match=r"rc_step2\.jsonl.*--file_name_prefix"):  # another operator: not a resume
        ImageBboxGenerator().run(storage=storage.step(), input_image_key="image", input_bbox_key="bbox")
    assert (cache / "rc_step2.jsonl").read_bytes() == before


def test_the_files_a_cache_writes_are_named(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for name in (
        "rc_step3.jsonl", "x_step1.parquet", "rc_step1.jsonl.manifest.json", "rc_step1.jsonl.media.ndjson",
        "rc_step1.jsonl.rejects.jsonl", "rc_summary.json", ".dataflow_mm.lock", "report.html", "logs/a.log",
        "media/ab.jpg", ".rc_step1.jsonl.parts/chunk_000000.jsonl", "rc_input_from_folder.jsonl",
    ):  # fmt: skip
        assert cache_file_kind(cache / name, cache), name
    for name in ("image_with_bbox_result.jsonl", "notes/step1.jsonl", "../rc_step1.jsonl"):
        assert cache_file_kind(cache / name, cache) is None, name
