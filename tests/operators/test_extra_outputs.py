"""Extra outputs (a config's ``output_jsonl_path``): written before the manifest, atomically with the
step files' file mode, checked on skip, and temp files of killed runs removed when the step runs again."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dataflow_mm import FileStorage
from dataflow_mm.operators.region_caption.image_bbox_generator import ExistingBBoxDataGenConfig, ImageBboxGenerator
from dataflow_mm.storage.manifest import manifest_path
from tests.support.sample_data import write_region_caption_table


def run_boxes(table: Path, cache: Path, extra: Path) -> tuple[ImageBboxGenerator, FileStorage]:
    storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc")
    operator = ImageBboxGenerator(ExistingBBoxDataGenConfig(output_jsonl_path=str(extra)))
    operator.run(storage.step())
    return operator, storage


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return write_region_caption_table(tmp_path / "imgs", n_rows=3, size=(48, 40), n_boxes=1)


def test_extra_output_has_the_step_files_mode_and_is_recorded_in_the_manifest(tmp_path: Path, table: Path) -> None:
    previous = os.umask(0o027)
    try:
        run_boxes(table, tmp_path / "cache", tmp_path / "out" / "boxes.jsonl")
    finally:
        os.umask(previous)
    step, extra = tmp_path / "cache" / "rc_step1.jsonl", tmp_path / "out" / "boxes.jsonl"
    assert stat.S_IMODE(extra.stat().st_mode) == stat.S_IMODE(step.stat().st_mode) == 0o640
    manifest = json.loads(manifest_path(step).read_text())
    assert list(manifest["extra_output_sha256"]) == [str(extra)]


def test_a_skipped_step_rewrites_an_extra_output_left_stale_by_a_killed_copy(tmp_path: Path, table: Path) -> None:
    extra = tmp_path / "boxes.jsonl"
    run_boxes(table, tmp_path / "cache", extra)
    good = extra.read_bytes()
    extra.write_bytes(good[: len(good) // 2])  # what a kill mid-copy (old code: fixed temp name) left
    run_boxes(table, tmp_path / "cache", extra)
    assert extra.read_bytes() == good
    extra.unlink()
    run_boxes(table, tmp_path / "cache", extra)
    assert extra.read_bytes() == good


def test_extra_output_is_written_before_the_manifest(tmp_path: Path, table: Path, monkeypatch) -> None:
    """A failure while writing the extra output leaves no manifest, so the next run redoes the step."""
    extra = tmp_path / "boxes.jsonl"
    import dataflow_mm.storage.step as step_transaction  # where the step writes its extra outputs

    def broken_copy(src: object, dst: object) -> None:
        Path(dst).write_bytes(b"partial")
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(step_transaction.shutil, "copyfile", broken_copy)
    with pytest.raises(KeyboardInterrupt):
        run_boxes(table, tmp_path / "cache", extra)
    assert not manifest_path(tmp_path / "cache" / "rc_step1.jsonl").exists() and not extra.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    run_boxes(table, tmp_path / "cache", extra)
    assert len(extra.read_text().splitlines()) == 3


def test_temp_files_of_a_killed_run_are_removed_when_the_step_runs_again(tmp_path: Path, table: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    left = [
        cache / f".rc_step1.jsonl.{child.pid}.deadbeef.tmp",  # a full-size assembly temp
        cache / f".rc_step1.jsonl.manifest.json.{child.pid}.deadbeef.tmp",
        tmp_path / f".boxes.jsonl.{child.pid}.deadbeef.tmp",
    ]
    for path in left:
        path.write_bytes(b"x" * 100_000)
    other_prefix = cache / f".other_step1.jsonl.{child.pid}.deadbeef.tmp"
    other_prefix.write_bytes(b"x")
    run_boxes(table, cache, tmp_path / "boxes.jsonl")
    assert not any(p.exists() for p in left)
    assert other_prefix.exists()  # not this step's file: left alone
