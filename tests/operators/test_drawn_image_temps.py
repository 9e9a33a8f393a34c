"""Temp files of drawn images left by a kill -9 are removed when the step runs again (issue 24 item 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dataflow_mm import ExistingBBoxDataGenConfig, FileStorage, ImageBboxGenerator
from dataflow_mm.testing.sample_data import write_region_caption_table

REPO = Path(__file__).resolve().parents[2]

# Writes a drawn image's temp file exactly as write_jpeg does, then dies by SIGKILL before the rename.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from dataflow_mm.storage.atomic import AtomicFile
atomic = AtomicFile(Path(sys.argv[1]) / "img0_bbox_vis.jpg")
atomic.tmp.write_bytes(b"\\xff\\xd8 half a jpeg")
print(atomic.tmp, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_writer_temp(folder: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(folder)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -9, done.stderr
    temp = Path(done.stdout.strip())
    assert temp.exists() and temp.name.startswith(".img0_bbox_vis.jpg.") and temp.name.endswith(".tmp")
    return temp


def run_boxes(table: Path, cache: Path, image_dir: Path | None = None) -> None:
    config = ExistingBBoxDataGenConfig(image_output_dir=str(image_dir) if image_dir else None)
    storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="t")
    ImageBboxGenerator(config=config).run(storage=storage.step(), input_image_key="image", input_bbox_key="bbox")


def test_the_box_step_removes_drawn_image_temps_of_a_killed_run(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    cache = tmp_path / "cache"
    cache.mkdir()
    temp = killed_writer_temp(cache)
    run_boxes(table, cache)
    assert not temp.exists()
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_the_same_holds_for_a_configured_image_folder(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=1)
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    temp = killed_writer_temp(drawn)
    run_boxes(table, tmp_path / "cache", drawn)
    assert not temp.exists()


def test_temps_of_a_live_writer_and_other_files_are_kept(tmp_path: Path) -> None:
    from dataflow_mm.storage.atomic import remove_stale_temps_in  # new with the fix

    live = tmp_path / f".a_bbox_vis.jpg.{os.getppid()}.0badc0de.tmp"  # a running process (another run)
    users = tmp_path / ".notes.jpg.backup.tmp"
    step_temp = tmp_path / f".t_step1.jsonl.{os.getppid() + 999_999}.0badc0de.tmp"  # not an image temp
    for path in (live, users, step_temp):
        path.write_bytes(b"x")
    assert remove_stale_temps_in(tmp_path, ".jpg") == []
    assert live.exists() and users.exists() and step_temp.exists()
