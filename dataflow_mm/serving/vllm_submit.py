"""Per-request submission to a vLLM engine, a bounded window of requests at a time.

``LLM.generate(list)`` decodes and preprocesses every request of a batch before the engine runs
(17 GiB of decoded pixels for 512 rows of 12 MP photos), and one request that vLLM refuses makes
the whole call raise. Here each request is built (its images decoded, by a small thread pool that
works ahead while the engine generates) shortly before it is submitted with ``LLM.enqueue``, at
most ``window`` requests are in the engine at once, and the engine is stepped
(``llm_engine.step()``, what ``LLM.wait_for_completion`` does) until one finishes, which makes room
for the next. So host memory is bounded by the window plus the few requests built ahead, not by
the chunk, and a request that fails to build or that vLLM refuses at submission fails alone:
nothing is re-run.

An exception raised by the engine itself (``step()``: the engine died) is not a request's fault:
it propagates to the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dataflow_mm.serving.vllm_window import (
    DEFAULT_BUILD_WORKERS,
    EngineWindow,
    Outcome,
    WindowLimits,
    external_id,
    is_engine_dead,
)

__all__ = ["DEFAULT_BUILD_WORKERS", "Outcome", "is_engine_dead", "submit_windowed"]
_external_id = external_id  # the old name

UNBOUNDED_BYTES = 1 << 62


def submit_windowed(
    llm: Any,
    count: int,
    build: Callable[[int], dict[str, Any]],
    params: Any,
    window: int,
    build_workers: int = DEFAULT_BUILD_WORKERS,
) -> list[Outcome]:
    """Answer requests ``0..count-1``; ``build(i)`` makes request ``i`` shortly before it is enqueued.

    One call on its own window (``serving.vllm_window.EngineWindow``, which several calls can share):
    ``build_workers`` threads build the next requests (decode their images) while the engine runs
    and this thread submits and collects: at most ``window`` requests are in the engine and
    ``build_workers`` more are built ahead. Requests are enqueued in order. Returns one outcome per
    request, in order: the finished ``RequestOutput``, or the exception that ``build`` (a
    ``RowError``) or ``LLM.enqueue`` raised for that request alone.
    """
    engine_window = EngineWindow(llm, WindowLimits(window, UNBOUNDED_BYTES), build_workers)
    try:
        return engine_window.submit(count, build, params)
    finally:
        engine_window.close()
