"""The cache lock never writes through a link or into anything but a regular file (issue 24 item 1).

The attack: ``ln -s ~/.bashrc CACHE/.dataflow_mm.lock`` before a run left ``~/.bashrc`` holding a pid.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dataflow_mm.errors import StorageError
from dataflow_mm.storage import FileStorage
from dataflow_mm.storage.lock import cache_lock, lock_file_of
from dataflow_mm.testing.sample_data import write_region_caption_table


def test_a_lock_file_linked_to_a_users_file_leaves_that_file_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "bashrc"
    victim.write_text("export PATH=$HOME/bin:$PATH\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    lock_file_of(cache).symlink_to(victim)
    with pytest.raises(StorageError, match="symbolic link") as info, cache_lock(cache):
        pass
    assert str(lock_file_of(cache)) in str(info.value) and "\n" not in str(info.value)
    assert victim.read_text() == "export PATH=$HOME/bin:$PATH\n"


def test_a_dangling_link_creates_nothing_where_it_points(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    target = tmp_path / "elsewhere" / "created"
    target.parent.mkdir()
    lock_file_of(cache).symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"), cache_lock(cache):
        pass
    assert not target.exists()


def test_a_fifo_at_the_lock_path_is_refused_without_hanging(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    os.mkfifo(lock_file_of(cache))
    with pytest.raises(StorageError, match="not a regular file"), cache_lock(cache):
        pass


def test_a_run_through_the_storage_stops_before_writing_anything(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1)
    victim = tmp_path / "bashrc"
    victim.write_bytes(b"alias ll='ls -l'\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    lock_file_of(cache).symlink_to(victim)
    with pytest.raises(StorageError), FileStorage(str(table), cache_path=str(cache)).locked():
        pass
    assert victim.read_bytes() == b"alias ll='ls -l'\n"


def test_a_regular_lock_file_still_works_and_holds_the_pid(tmp_path: Path) -> None:
    with cache_lock(tmp_path / "cache"):
        assert lock_file_of(tmp_path / "cache").read_text().strip() == str(os.getpid())
