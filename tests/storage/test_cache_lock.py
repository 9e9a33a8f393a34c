"""One run per cache folder: an OS lock that dies with its process (issue #12 item 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage import FileStorage
from dataflow_mm.storage.lock import CacheLockedError, cache_lock, lock_file_of

HOLD = """
import sys, time
from dataflow_mm.storage.lock import cache_lock
with cache_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_another_process(cache: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(cache)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    holder = hold_in_another_process(tmp_path / "cache")
    try:
        with pytest.raises(CacheLockedError, match=f"pid {holder.pid}") as info, cache_lock(tmp_path / "cache"):
            pass
        assert isinstance(info.value, StorageError)  # a user error: one line, exit 2
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_never_leaves_the_cache_locked(tmp_path):
    holder = hold_in_another_process(tmp_path / "cache")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_file_of(tmp_path / "cache").exists()  # the file stays; the lock went with the process
    with cache_lock(tmp_path / "cache"):
        assert lock_file_of(tmp_path / "cache").read_text().strip() == str(os.getpid())


def test_waiting_for_the_lock_takes_it_when_the_holder_ends(tmp_path):
    holder = hold_in_another_process(tmp_path / "cache")
    started = time.monotonic()
    killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1); os.kill({holder.pid}, 9)"])
    with cache_lock(tmp_path / "cache", wait=True):
        assert time.monotonic() - started >= 0.9
    killer.wait()
    holder.wait()


def test_the_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path):
    storage = FileStorage(tmp_path / "in.jsonl", cache_path=str(tmp_path / "cache"))
    with storage.locked(), storage.locked():
        pass
    code = f"from dataflow_mm.storage.lock import cache_lock\nwith cache_lock({str(tmp_path / 'cache')!r}): pass"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # free again
