"""Step manifests: written in one pass whatever their size, read back as written; media stamps in their own file."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from dataflow_mm.storage.hashing import file_sha256
from dataflow_mm.storage.manifest import (
    StepManifest,
    iter_media_stamps,
    manifest_path,
    media_path,
    write_media_stamps,
)
from dataflow_mm.storage.media_stamps import media_stamps


def manifest_with_media(count: int) -> StepManifest:
    media = {
        f"/data/cache/image_{i:06d}_bbox_vis_0123456789abcdef.jpg": [3000 + i, 10**18 + i, "ab" * 32]
        for i in range(count)
    }
    return StepManifest("ImageBboxGenerator", "f" * 16, {"max_boxes": 10}, "/data/in.jsonl", "0" * 64, media=media,
                        stats={"rows_out": count, "score": 1e-12})  # fmt: skip


def test_a_manifest_reads_back_as_written(tmp_path: Path) -> None:
    manifest = manifest_with_media(3)
    manifest.params = {"prompt": "Décris la région", "huge": 10**30, "path": Path("/x")}  # stdlib fallback
    manifest.save(tmp_path / "step.jsonl")
    loaded = StepManifest.load(tmp_path / "step.jsonl")
    assert loaded is not None and loaded.media == manifest.media and loaded.stats["score"] == 1e-12
    assert loaded.params == {"prompt": "Décris la région", "huge": 10**30, "path": "/x"}

    manifest.params = {"prompt": "Décris la région"}
    manifest.save(tmp_path / "step.jsonl")  # the fast path
    assert json.loads(manifest_path(tmp_path / "step.jsonl").read_text(encoding="utf-8"))["media"] == manifest.media


def test_saving_a_manifest_with_a_stamp_per_row_costs_about_its_own_size(tmp_path: Path) -> None:
    """A step that read 20k drawn images: no deep copy, no string per token (they made the run's peak)."""
    manifest = manifest_with_media(20_000)
    tracemalloc.start()
    try:
        manifest.save(tmp_path / "step.jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = manifest_path(tmp_path / "step.jsonl").stat().st_size
    assert peak < 3.5 * size, (peak, size)  # was 4.6x: the stdlib's indented encoder and a deep copy


def test_a_steps_media_stamps_live_in_their_own_file_checked_a_line_at_a_time(tmp_path: Path) -> None:
    """The manifest records only the stamps file's hash: it stays small however many images the step read."""
    images = []
    for i in range(3):
        image = tmp_path / f"img{i}.jpg"
        image.write_bytes(bytes([i]) * 100)
        images.append(str(image))
    step_file = tmp_path / "step.jsonl"
    step_file.write_text('{"a": 1}\n', encoding="utf-8")
    markers = [media_stamps([images[:2]], None), media_stamps([images[2:]], None)]  # two chunks' markers
    sha = write_media_stamps(step_file, markers)
    manifest = StepManifest("Op", "f" * 16, {}, "in.jsonl", "0" * 64, output_sha256=file_sha256(step_file),
                            media_sha256=sha)  # fmt: skip
    manifest.save(step_file)
    assert "img0.jpg" not in manifest_path(step_file).read_text(encoding="utf-8")
    assert [p for p, _ in iter_media_stamps(step_file)] == images
    assert manifest.matches("f" * 16, "0" * 64, step_file)

    Path(images[1]).write_bytes(b"changed")  # an image the step read changed: the step is not current
    assert not manifest.matches("f" * 16, "0" * 64, step_file)
    Path(images[1]).write_bytes(bytes([1]) * 100)
    media_path(step_file).write_text(media_path(step_file).read_text(encoding="utf-8")[:-20], encoding="utf-8")
    assert not manifest.matches("f" * 16, "0" * 64, step_file)  # a damaged stamps file proves nothing
    media_path(step_file).unlink()
    assert not manifest.matches("f" * 16, "0" * 64, step_file)


def test_a_step_without_media_leaves_no_stamps_file(tmp_path: Path) -> None:
    assert write_media_stamps(tmp_path / "step.jsonl", [{}, {}]) == ""
    assert not media_path(tmp_path / "step.jsonl").exists()


def test_a_manifest_with_inline_stamps_written_before_the_stamps_file_is_still_honoured(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x" * 10)
    step_file = tmp_path / "step.jsonl"
    step_file.write_text("{}\n", encoding="utf-8")
    manifest = StepManifest("Op", "f" * 16, {}, "in.jsonl", "0" * 64, output_sha256=file_sha256(step_file),
                            media=media_stamps([[str(image)]], None))  # fmt: skip
    manifest.save(step_file)
    loaded = StepManifest.load(step_file)
    assert loaded is not None and loaded.matches("f" * 16, "0" * 64, step_file)
    image.write_bytes(b"y" * 11)
    assert not loaded.matches("f" * 16, "0" * 64, step_file)
