"""The one atomic writer: unique temp names beside the target, the user's umask, stale temps removed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dataflow_mm.imaging.saving import save_image_atomic
from dataflow_mm.storage.atomic import AtomicFile, remove_stale_temps, write_bytes_atomic
from dataflow_mm.storage.table_types import SUPPORTED_TYPES
from dataflow_mm.storage.table_writer import write_json_atomic, write_table


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("table_type", SUPPORTED_TYPES)
def test_step_files_follow_the_umask_not_0600(tmp_path: Path, umask_027: None, table_type: str) -> None:
    path = write_table(pd.DataFrame({"a": [1]}), tmp_path / f"s.{table_type}", table_type)
    assert mode(path) == 0o640


def test_manifests_markers_and_images_follow_the_umask(tmp_path: Path, umask_027: None) -> None:
    written = [
        write_json_atomic({"x": 1}, tmp_path / "m.manifest.json"),
        write_bytes_atomic(b"abc", tmp_path / "chunk.jsonl"),
        save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "drawn.jpg"),
    ]
    assert [mode(p) for p in written] == [0o640] * 3
    os.umask(0o002)
    assert mode(write_bytes_atomic(b"abc", tmp_path / "again.bin")) == 0o664


def test_temp_names_are_unique_and_beside_the_target(tmp_path: Path) -> None:
    first, second = AtomicFile(tmp_path / "out.jsonl"), AtomicFile(tmp_path / "out.jsonl")
    assert first.tmp != second.tmp and first.tmp.parent == second.tmp.parent == tmp_path
    first.tmp.write_text("one")
    second.tmp.write_text("two")
    first.commit()
    assert (tmp_path / "out.jsonl").read_text() == "one"
    second.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_an_error_while_writing_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), AtomicFile(target) as atomic:
        atomic.tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_remove_stale_temps_only_takes_this_targets_temps_of_dead_writers(tmp_path: Path) -> None:
    target = tmp_path / "run_step1.jsonl"
    stale = tmp_path / f".run_step1.jsonl.{dead_pid()}.0badc0de.tmp"
    live = tmp_path / f".run_step1.jsonl.{os.getppid()}.0badc0de.tmp"  # a running process (another run)
    mine = AtomicFile(target).tmp  # this process, in flight
    other_step = tmp_path / f".run_step2.jsonl.{dead_pid()}.0badc0de.tmp"
    users_file = tmp_path / ".run_step1.jsonl.backup.tmp"
    for path in (stale, live, other_step, users_file):
        path.write_bytes(b"x" * 1000)
    assert remove_stale_temps(target) == [stale]
    assert not stale.exists() and live.exists() and mine.exists() and other_step.exists() and users_file.exists()
