"""Chunks in flight: an operator whose serving waits on I/O (the API backend) has up to
``concurrent_chunks`` chunks of one step transformed at once, so ``max_workers`` requests stay in
flight across chunk boundaries; chunks are still written and handed on in chunk order, and the step
files equal, byte for byte, those of a sequential (``--no_streaming``, one chunk at a time) run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from dataflow_mm import FileStorage, ImageBboxGenerator, PipelineABC, PromptedVQAGenerator
from dataflow_mm.common.chunk_order import current_chunk
from dataflow_mm.engine import LocalRunner
from dataflow_mm.operators.imgdiff.step1_region_captioner import ImgDiffRegionCaptioner
from dataflow_mm.operators.imgdiff.step5_difference_captioner import ImgDiffDifferenceCaptioner
from dataflow_mm.serving.api_serving import APIVLMServing_openai
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.storage.step import StepTransaction
from tests.support.fake_serving import FakeVLMServing
from tests.support.imgdiff_pairs import write_imgdiff_table
from tests.support.openai_test_server import OpenAITestServer
from tests.support.sample_data import write_region_caption_table

STEP_FILES = ("rc_step1.jsonl", "rc_step2.jsonl")


class RegionCaptions(PipelineABC):
    def __init__(self, table: Path, cache: Path, serving: VLMServing, chunk_size: int = 3) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=chunk_size)
        self.boxes = ImageBboxGenerator()
        self.captions = PromptedVQAGenerator(serving)

    def forward(self) -> None:
        self.boxes.run(self.storage.step())
        self.captions.run(self.storage.step(), input_image_key="image_with_bbox")


def step_bytes(cache: Path) -> dict[str, bytes]:
    marker = json.dumps(str(cache))[1:-1].encode()
    return {name: (cache / name).read_bytes().replace(marker, b"<cache>") for name in STEP_FILES}


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return write_region_caption_table(tmp_path / "imgs", n_rows=9, size=(96, 72), n_boxes=2)


def test_the_api_backend_keeps_max_workers_requests_in_flight_across_chunks(tmp_path: Path, table: Path) -> None:
    # 9 rows in chunks of 3, 4 workers: one chunk at a time never has more than 3 requests out.
    with OpenAITestServer(delay=0.3) as server:
        sequential = APIVLMServing_openai(server.base_url, "test-model", api_key_env=None, max_workers=4)
        sequential.concurrent_chunks = 1
        RegionCaptions(table, tmp_path / "sequential", sequential).run(LocalRunner(streaming=False))
        sequential.cleanup()
        assert server.max_in_flight == 3

        server.max_in_flight = 0
        overlapped = APIVLMServing_openai(server.base_url, "test-model", api_key_env=None, max_workers=4)
        assert overlapped.concurrent_chunks > 1  # the API backend's default
        RegionCaptions(table, tmp_path / "overlapped", overlapped).run(LocalRunner())
        overlapped.cleanup()
        assert server.max_in_flight == 4  # the next chunk's requests fill the pool; never above max_workers

    assert step_bytes(tmp_path / "overlapped") == step_bytes(tmp_path / "sequential")
    assert (overlapped.stats.calls, overlapped.stats.requests, overlapped.stats.failed) == (3, 9, 0)
    assert overlapped.stats.extra["http_requests"] == 9


class UnevenServing(FakeVLMServing):
    """The first chunk's call is the slowest: later chunks finish before it."""

    concurrent_chunks = 3

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self._first = threading.Lock()
        self._calls = 0

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        with self._first:
            self._calls += 1
            number = self._calls
        self.order.append(f"start{number}")
        time.sleep(0.4 if number == 1 else 0.05)
        self.order.append(f"end{number}")
        return super()._chat_batch(conversations, sampling)


@pytest.mark.parametrize("streaming", [True, False])
def test_chunks_finishing_out_of_order_are_written_in_chunk_order(
    tmp_path: Path, table: Path, monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    written: list[tuple[int, int]] = []
    original = StepTransaction.write

    def recording_write(self, chunk, out, counts):  # type: ignore[no-untyped-def]
        written.append((self.storage.output_step, chunk.index))
        original(self, chunk, out, counts)

    monkeypatch.setattr(StepTransaction, "write", recording_write)
    serving = UnevenServing()
    RegionCaptions(table, tmp_path / "uneven", serving).run(LocalRunner(streaming=streaming))
    assert serving.order.index("start2") < serving.order.index("end1")  # chunk 2 overlapped chunk 1
    assert [index for step, index in written if step == 2] == [0, 1, 2]

    serving.concurrent_chunks = 1
    RegionCaptions(table, tmp_path / "one_at_a_time", serving).run(LocalRunner(streaming=False))
    assert step_bytes(tmp_path / "uneven") == step_bytes(tmp_path / "one_at_a_time")


class SlowFirstChunk(FakeVLMServing):
    """Two chunks at a time; chunk 0's call is slow, every other chunk's quick."""

    concurrent_chunks = 2

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int | None]] = []

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        chunk = current_chunk()  # the step executor says which chunk this thread works for
        self.events.append(("start", chunk))
        time.sleep(0.8 if chunk == 0 else 0.05)
        self.events.append(("end", chunk))
        return super()._chat_batch(conversations, sampling)


def test_chunks_answered_before_a_slow_head_do_not_hold_the_next_chunks_back(tmp_path: Path, table: Path) -> None:
    serving = SlowFirstChunk()
    RegionCaptions(table, tmp_path / "slow_head", serving, chunk_size=1).run(LocalRunner(streaming=False))
    events = serving.events
    head_done = events.index(("end", 0))
    # Two chunks run at once: while chunk 0 runs, chunks 1, 2 and 3 run one after another (the answered
    # ones wait only to be written), and no more than two chunks' results are held beyond the two running.
    assert {("start", 1), ("start", 2), ("start", 3)} <= set(events[:head_done])
    assert events.index(("start", 4)) > head_done
    running = most = 0
    for kind, _ in events:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2

    serving.concurrent_chunks = 1
    RegionCaptions(table, tmp_path / "one_at_a_time", serving, chunk_size=1).run(LocalRunner(streaming=False))
    assert step_bytes(tmp_path / "slow_head") == step_bytes(tmp_path / "one_at_a_time")


class FailingSecondChunk(FakeVLMServing):
    """With chunks of 5 rows: the second chunk's call (4 rows) fails at once (a bug or a dead engine),
    while the first one is still running."""

    concurrent_chunks = 2

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        if len(conversations) == 4:
            raise RuntimeError("engine lost")
        time.sleep(0.3)
        return super()._chat_batch(conversations, sampling)


def test_a_chunk_that_fails_stops_the_step_after_the_chunks_before_it_are_written(tmp_path: Path, table: Path) -> None:
    cache = tmp_path / "failing"
    with pytest.raises(RuntimeError, match="engine lost"):
        RegionCaptions(table, cache, FailingSecondChunk(), chunk_size=5).run(LocalRunner(streaming=False))
    markers = sorted(p.name for p in (cache / ".rc_step2.jsonl.parts").glob("chunk_*.done.json"))
    assert len(markers) == 1 and not (cache / "rc_step2.jsonl").exists()


def test_imgdiff_captioners_keep_the_api_pool_full_across_chunks(tmp_path: Path) -> None:
    # 4 pairs with one box each, one row per chunk: the region step asks 2 requests per chunk, the
    # difference step 1; with one chunk at a time the pool of 4 never holds more than that.
    table = write_imgdiff_table(tmp_path / "pairs", 4, n_boxes=1, size=(96, 72))
    names = ("diff_step1.jsonl", "diff_step2.jsonl")
    peaks: dict[int, list[int]] = {}
    files: dict[int, list[bytes]] = {}
    with OpenAITestServer(delay=0.2) as server:  # one server: the provenance names its address
        for chunks in (1, 2):
            cache = tmp_path / f"chunks{chunks}"
            storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="diff", chunk_size=1)
            serving = APIVLMServing_openai(server.base_url, "test-model", api_key_env=None, max_workers=4)
            serving.concurrent_chunks = chunks
            peaks[chunks] = []
            for operator in (
                ImgDiffRegionCaptioner(serving, max_box_area_ratio=None),
                ImgDiffDifferenceCaptioner(serving),
            ):
                server.max_in_flight = 0
                operator.run(storage.step())
                peaks[chunks].append(server.max_in_flight)
            serving.cleanup()
            assert (serving.stats.requests, serving.stats.failed) == (12, 0)
            marker = json.dumps(str(cache))[1:-1].encode()
            files[chunks] = [(cache / name).read_bytes().replace(marker, b"<cache>") for name in names]
    assert peaks == {1: [2, 1], 2: [4, 2]}  # two chunks' requests out at once in both steps
    assert files[2] == files[1]  # the same step files, byte for byte
