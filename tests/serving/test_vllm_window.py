"""The vLLM request window shared by the chunks in flight (``serving.vllm_window``), against a stand-in
engine that, like vLLM's loop, finishes requests as it steps: the engine's batch stays full across
chunk boundaries, never holds more than the window (requests, bytes of decoded images), defaults to
the engine's ``max_num_seqs``, and the step files equal those of a one-chunk run."""

from __future__ import annotations

import os
import sys
import threading
import types
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dataflow_mm.serving.vllm_window import (
    DEFAULT_BUILD_WORKERS,
    EngineWindow,
    WindowLimits,
    default_build_workers,
    prepared_bytes,
    window_limits,
)
from tests.support.stand_in_vllm import LLM, request


class CountedLine(deque):  # type: ignore[type-arg]
    """The window's line of calls, counting every call that got in line (one may leave it at once)."""

    arrived = 0

    def insert(self, index: int, call: Any) -> None:
        super().insert(index, call)
        self.arrived += 1


def lined_up_window(llm: LLM, limits: WindowLimits, build_workers: int) -> EngineWindow:
    window = EngineWindow(llm, limits, build_workers=build_workers)
    window._calls = CountedLine()
    return window


def request_once_two_calls_wait(window: EngineWindow, text: str, held: str) -> dict[str, Any]:
    """``request(text)``; the request named ``held`` is built only once a second call got in line."""
    if text == held:
        for _ in range(500):
            if window._calls.arrived == 2:  # type: ignore[attr-defined]
                break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("the second call could not get in line while the first built")
    return request(text)


def run_in_line(window: EngineWindow, first: threading.Thread, second: threading.Thread) -> None:
    """Start ``first``, then ``second`` once ``first``'s call is in the window's line; wait for both."""
    first.start()
    while not window._calls:
        threading.Event().wait(0.001)
    second.start()
    first.join()
    second.join()


@pytest.fixture(params=[0, DEFAULT_BUILD_WORKERS], ids=["built_by_the_driver", "build_threads"])
def build_workers(request: pytest.FixtureRequest) -> int:
    """Requests built on the driver (a host without spare cores) or on build threads."""
    return int(request.param)


def test_calls_from_two_threads_share_the_window_and_the_batch_stays_full_between_them(build_workers: int) -> None:
    llm = LLM()
    window = lined_up_window(llm, WindowLimits(4, 1 << 30), build_workers)
    results: dict[str, list[Any]] = {}
    builders: set[str] = set()

    def both_registered(text: str) -> dict[str, Any]:
        """The first call's first request waits until the second call is in line (two chunks in flight)."""
        builders.add(threading.current_thread().name)
        return request_once_two_calls_wait(window, text, held="a0")

    def call(name: str, count: int) -> None:
        results[name] = window.submit(count, lambda i: both_registered(f"{name}{i}"), None)

    first = threading.Thread(target=call, args=("a", 7), name="first")
    second = threading.Thread(target=call, args=("b", 9), name="second")
    first.start()
    second.start()
    first.join()
    second.join()
    window.close()
    assert [o.outputs[0].text for o in results["a"]] == [f"re: a{i}" for i in range(7)]
    assert [o.outputs[0].text for o in results["b"]] == [f"re: b{i}" for i in range(9)]
    assert len(llm.enqueued) == 16 and window.times.most_in_flight == 4
    # While requests remain to be enqueued, every step runs a full window (no drain between the calls).
    assert all(in_flight == 4 for in_flight, enqueued in llm.llm_engine.batches if enqueued < 16)
    assert window.times.enqueue > 0 and window.times.step > 0
    if build_workers:
        assert builders <= {f"vllm-build_{i}" for i in range(build_workers)}
    else:
        assert builders <= {"first", "second"}  # the callers' own threads, whichever drives


def test_an_earlier_chunk_is_served_first_whichever_thread_arrived_first(build_workers: int) -> None:
    from dataflow_mm.common.chunk_order import working_on_chunk

    llm = LLM()
    window = lined_up_window(llm, WindowLimits(2, 1 << 30), build_workers)

    def call(chunk: int, name: str) -> None:
        """Chunk 1 reaches the window first; its first request is built once chunk 0 is in line too."""
        working_on_chunk(
            chunk, window.submit, 6, lambda i: request_once_two_calls_wait(window, f"{name}{i}", held="b0"), None
        )

    run_in_line(window, threading.Thread(target=call, args=(1, "b")), threading.Thread(target=call, args=(0, "a")))
    window.close()
    order = llm.enqueued
    # Only what chunk 1 had taken out of line before chunk 0 came (its builds ahead) goes first.
    assert order.index("b0") < order.index("a0")
    assert order.index("a5") < order.index("b2"), order


def test_a_caller_answered_in_full_returns_while_another_thread_still_drives(
    build_workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataflow_mm.common.chunk_order import working_on_chunk

    monkeypatch.setattr(LLM, "step_seconds", 0.1)  # each step answers the oldest request
    llm = LLM()
    window = lined_up_window(llm, WindowLimits(8, 1 << 30), build_workers)
    returned: dict[str, int] = {}

    def call(chunk: int, name: str, count: int) -> None:
        working_on_chunk(
            chunk, window.submit, count, lambda i: request_once_two_calls_wait(window, f"{name}{i}", held="b0"), None
        )
        returned[name] = len(llm.llm_engine.batches)  # steps run when this caller got its answers

    driver = threading.Thread(target=call, args=(1, "b", 6))  # drives: first in
    waiting = threading.Thread(target=call, args=(0, "a", 1))  # its one request is answered early
    run_in_line(window, driver, waiting)
    window.close()
    assert returned["b"] == 7
    assert returned["a"] <= 4  # not held until the driver's own call was answered


def test_build_threads_only_where_the_host_has_cores_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_build_workers() == DEFAULT_BUILD_WORKERS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_build_workers() == 0  # the engine core's process and the driver take both
    assert EngineWindow(LLM(), WindowLimits(2, 1 << 30)).build_workers == 0
    with pytest.raises(ValueError, match="build_workers"):
        EngineWindow(LLM(), WindowLimits(2, 1 << 30), build_workers=-1)


def test_host_memory_bounds_the_window_in_bytes_of_decoded_images_one_always_goes_in(build_workers: int) -> None:
    llm = LLM()
    window = EngineWindow(llm, WindowLimits(100, 3 * 1000 * 3 + 100), build_workers=build_workers)
    sizes = [1000, 1000, 1000, 1000, 5000, 1000]  # the 5000-pixel image alone exceeds the bound
    outcomes = window.submit(len(sizes), lambda i: request(f"r{i}", sizes[i]), None)
    assert len(outcomes) == 6 and all(o.finished for o in outcomes)
    assert window.times.most_prepared_bytes <= max(3 * 1000 * 3 + 100, 5000 * 3 + 2)
    assert max(in_flight for in_flight, _ in llm.llm_engine.batches) == 3  # three 1000-pixel images fit
    assert prepared_bytes(request("ab", 10)) == 2 + 30


def test_the_default_window_is_the_engines_max_num_seqs() -> None:
    llm = LLM()
    assert window_limits(llm, None, None).requests == LLM.max_num_seqs
    assert window_limits(llm, None, None).prepared_bytes > 0
    assert window_limits(llm, 3, 1000) == WindowLimits(3, 1000)
    assert window_limits(SimpleNamespace(llm_engine=None), None, 1).requests == 256  # an engine that does not say


def test_a_request_that_fails_to_build_fails_alone(build_workers: int) -> None:
    from dataflow_mm.common.errors import ImageLoadError

    def build(i: int) -> dict[str, Any]:
        if i == 2:
            raise ImageLoadError("cannot identify image file")
        return request(f"r{i}")

    window = EngineWindow(LLM(), WindowLimits(2, 1 << 30), build_workers=build_workers)
    outcomes = window.submit(5, build, None)
    assert isinstance(outcomes[2], ImageLoadError)
    assert [o.outputs[0].text for i, o in enumerate(outcomes) if i != 2] == ["re: r0", "re: r1", "re: r3", "re: r4"]


# ---------------------------------------------------------------- a step on the vLLM serving


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[LLM]:
    module = types.ModuleType("vllm")
    module.LLM = LLM  # type: ignore[attr-defined]
    module.SamplingParams = lambda **kwargs: SimpleNamespace(kwargs=kwargs)  # type: ignore[attr-defined]
    module.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")  # the start method is the user's when set
    LLM.instances = []
    monkeypatch.setattr(LLM, "step_seconds", 0.1)  # the next chunk is prepared meanwhile
    return LLM


def run_step(table: Path, cache: Path, model_dir: Path, chunk_size: int) -> tuple[bytes, LLM]:
    from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

    class Ask(PipelineABC):
        def __init__(self) -> None:
            self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="w", chunk_size=chunk_size)
            self.serving = LocalModelVLMServing_vllm(str(model_dir), vllm_max_tokens=4)
            self.ask = PromptedVQAGenerator(self.serving)

        def forward(self) -> None:
            self.ask.run(self.storage.step(), input_prompt_key="question")

    pipeline = Ask()
    pipeline.forward()  # uncompiled: the stand-in vllm is not an installed package
    (llm,) = [i for i in LLM.instances if i not in seen]
    seen.append(llm)
    assert pipeline.serving.window_report()["max_requests"] == LLM.max_num_seqs
    pipeline.serving.cleanup()
    return (cache / "w_step1.jsonl").read_bytes(), llm


seen: list[LLM] = []


def test_a_step_in_small_chunks_keeps_the_engine_full_and_writes_what_one_chunk_writes(
    fake_vllm: type[LLM], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    import json

    rows = 40
    table = tmp_path / "questions.jsonl"
    table.write_text("".join(json.dumps({"id": i, "question": f"question {i}?"}) + "\n" for i in range(rows)))
    one_chunk, _ = run_step(table, tmp_path / "one", tiny_qwen_dir, chunk_size=rows)
    small_chunks, llm = run_step(table, tmp_path / "small", tiny_qwen_dir, chunk_size=4)

    assert small_chunks.replace(b"small", b"one") == one_chunk
    assert len(llm.enqueued) == rows
    # Chunks of 4 with a window of 6: once the first chunk was sent (the second one's budget check may still
    # run), the engine ran 6 requests at every step while any remained to send; one chunk at a time never
    # had more than 4.
    batches = llm.llm_engine.batches
    steady = [in_flight for in_flight, enqueued in batches if 4 < enqueued < rows]
    assert steady and all(in_flight == LLM.max_num_seqs for in_flight in steady), str(batches)


def test_the_engine_starts_with_spawn_when_other_threads_run_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataflow_mm.serving.vllm_serving import use_spawn_when_threaded

    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    worker = threading.Thread(target=use_spawn_when_threaded)  # a streaming step's thread starts the engine
    worker.start()
    worker.join()
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    use_spawn_when_threaded()
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"  # the user's choice stands
