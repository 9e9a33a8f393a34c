"""A step is current only while the images it read are unchanged: replacing an image file (same path, new
content) between runs redoes the steps that read it; touching a file without changing it redoes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm import FileStorage, ImageBboxGenerator, PipelineABC, PromptedVQAGenerator
from dataflow_mm.common.errors import error_class_of
from dataflow_mm.pipeline.summary import RunSummary
from dataflow_mm.serving.base import Completion, Conversation, SamplingParams
from dataflow_mm.storage.manifest import StepManifest, iter_media_stamps
from dataflow_mm.storage.media_stamps import changed_media, media_stamps
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_jsonl


class CountingServing(FakeVLMServing):
    """Counts the requests it answers; ``stop_after`` requests, it raises (a run killed mid-step)."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.requests = 0
        self.stop_after = stop_after

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        if self.stop_after is not None and self.requests >= self.stop_after:
            raise KeyboardInterrupt
        self.requests += len(conversations)
        return super()._chat_batch(conversations, sampling)


class Captions(PipelineABC):
    def __init__(self, table: Path, cache: Path, serving: FakeVLMServing) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=1)
        self.boxes = ImageBboxGenerator()
        self.vqa = PromptedVQAGenerator(serving)

    def forward(self) -> None:
        self.boxes.run(self.storage.step())
        self.vqa.run(self.storage.step(), input_image_key="image_with_bbox")


def photo(path: Path, color: tuple[int, int, int]) -> Path:
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    image.paste(color, (8, 8, 40, 32))
    image.save(path, format="JPEG")
    return path


@pytest.fixture
def table(tmp_path: Path) -> Path:
    images = [photo(tmp_path / f"{name}.jpg", (200, 30 * i, 10)) for i, name in enumerate("abc")]
    return write_jsonl(tmp_path / "table.jsonl", [{"image": str(p), "bbox": [[4, 4, 20, 20]]} for p in images])


def run(table: Path, serving: FakeVLMServing | None = None) -> tuple[RunSummary, list[dict]]:
    summary = Captions(table, table.parent / "cache", serving or CountingServing()).run()
    rows = [json.loads(line) for line in (table.parent / "cache" / "rc_step2.jsonl").read_text().splitlines()]
    return summary, rows


def test_a_replaced_image_redoes_the_steps_that_read_it(table: Path) -> None:
    _, before = run(table)
    first = table.parent / "b.jpg"
    photo(first, (0, 0, 250))  # same path, new content
    serving = CountingServing()
    summary, after = run(table, serving)
    assert [s.skipped for s in summary.steps] == [False, False]
    # The step is redone for the one row whose drawn image is new; the other two rows (same content, same
    # drawn images) are reused from the earlier run (issue 23: only new rows cost anything).
    assert serving.requests == 1
    assert after[1]["image_with_bbox"] != before[1]["image_with_bbox"]  # drawn from the new content
    assert [r["image_with_bbox"] for r in (after[0], after[2])] == [
        r["image_with_bbox"] for r in (before[0], before[2])
    ]
    step_file = table.parent / "cache" / "rc_step1.jsonl"
    manifest = StepManifest.load(step_file)
    assert manifest is not None and manifest.media_sha256 and not manifest.media  # stamps in their own file
    assert sorted(Path(p).name for p, _ in iter_media_stamps(step_file)) == ["a.jpg", "b.jpg", "c.jpg"]


def test_touching_an_image_without_changing_it_redoes_nothing(table: Path) -> None:
    run(table)
    image = table.parent / "a.jpg"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    serving = CountingServing()
    summary, _ = run(table, serving)
    assert [s.skipped for s in summary.steps] == [True, True] and serving.requests == 0


def test_a_drawn_image_replaced_in_the_cache_redoes_only_the_step_that_reads_it(table: Path) -> None:
    _, rows = run(table)
    photo(Path(rows[0]["image_with_bbox"]), (9, 9, 9))
    serving = CountingServing()
    summary, _ = run(table, serving)
    assert [s.skipped for s in summary.steps] == [True, False] and serving.requests == 3


def test_an_image_that_appears_after_a_failed_run_is_read(table: Path, tmp_path: Path) -> None:
    missing = tmp_path / "late.jpg"
    write_jsonl(table, [{"image": str(missing), "bbox": [[4, 4, 20, 20]]}])
    _, rows = run(table)
    assert error_class_of(rows[0]["error"]) == "ImageNotFoundError"
    photo(missing, (10, 200, 10))
    summary, rows = run(table)
    assert [s.skipped for s in summary.steps] == [False, False]
    assert rows[0]["error"] is None and rows[0]["answer"]


def test_an_interrupted_step_redoes_only_the_chunks_whose_images_changed(table: Path) -> None:
    run(table, None)  # step 1 and 2 complete
    (table.parent / "cache" / "rc_step2.jsonl.manifest.json").unlink()  # step 2 must run again...
    with pytest.raises(KeyboardInterrupt):
        run(table, CountingServing(stop_after=2))  # ...and is killed after its first two chunks
    drawn = [
        json.loads(x)["image_with_bbox"] for x in (table.parent / "cache" / "rc_step1.jsonl").read_text().splitlines()
    ]
    photo(Path(drawn[0]), (1, 2, 3))  # chunk 0's image changes while the step is unfinished
    serving = CountingServing()
    summary, _ = run(table, serving)
    assert [s.skipped for s in summary.steps] == [True, False]
    assert serving.requests == 2  # chunk 0 (changed) and chunk 2 (never done); chunk 1 kept


def test_stamps_rule(tmp_path: Path) -> None:
    image = photo(tmp_path / "x.jpg", (1, 1, 1))
    stamps = media_stamps([[str(image), "https://example.com/a.jpg", None, b"raw"], ["x.jpg"]], tmp_path)
    assert list(stamps) == [str(image)] and stamps[str(image)][0] == image.stat().st_size
    assert changed_media(stamps) == []
    photo(image, (250, 1, 1))
    assert changed_media(stamps) == [str(image)]
    image.unlink()
    assert changed_media(stamps) == [str(image)]
    assert changed_media({str(image): None}) == []
