"""The box step reads each input image once: it decodes the very bytes its media stamp hashed, so the
chunk's stamps read no file again, and the stamps equal those taken from the files afresh."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dataflow_mm import ExistingBBoxDataGenConfig, FileStorage, ImageBboxGenerator
from dataflow_mm.errors import ImageDecodeError
from dataflow_mm.imaging.loading import load_image
from dataflow_mm.storage import hashing, media_stamps
from dataflow_mm.storage.manifest import iter_media_stamps
from dataflow_mm.testing.sample_data import write_region_caption_table


def test_each_input_image_is_read_once_and_stamped_from_those_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=6, size=(96, 72), n_boxes=2)
    hashed_again: list[str] = []
    read_sha256 = media_stamps.read_sha256
    monkeypatch.setattr(media_stamps, "read_sha256", lambda path: hashed_again.append(str(path)) or read_sha256(path))
    opened: list[str] = []
    read_stamped = hashing.read_stamped
    monkeypatch.setattr(
        "dataflow_mm.operators.image_bbox_generator.read_stamped",
        lambda path: opened.append(str(path)) or read_stamped(path),
    )
    storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"), file_name_prefix="bb", chunk_size=4)
    ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=4)).run(storage.step())

    inputs = sorted({os.path.abspath(p) for p in opened})
    assert len(opened) == 6 and len(inputs) >= 1
    assert hashed_again == []  # no input read a second time for its stamp (drawn outputs are remembered)
    stamps = dict(iter_media_stamps(tmp_path / "cache" / "bb_step1.jsonl"))
    for path in inputs:
        size, mtime_ns, sha = stamps[path]
        info = os.stat(path)
        assert (size, mtime_ns) == (info.st_size, info.st_mtime_ns)
        assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_decode_errors_of_bytes_read_from_a_path_name_the_path(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    data, stamp = hashing.read_stamped(broken)
    assert stamp[0] == len(data) and stamp[2] == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageDecodeError, match=r"broken\.jpg"):
        load_image(data, label=f"'{broken}'")
    with pytest.raises(ImageDecodeError, match="bytes in memory"):
        load_image(data)
