"""Step manifests: written in one pass whatever their size, read back as written."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from dataflow_mm.storage.manifest import StepManifest, manifest_path


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
