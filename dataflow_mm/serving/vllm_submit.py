"""Per-request submission to a vLLM engine, a bounded window of requests at a time.

``LLM.generate(list)`` decodes and preprocesses every request of a batch before the engine runs
(17 GiB of decoded pixels for 512 rows of 12 MP photos), and one request that vLLM refuses makes
the whole call raise. Here each request is built (its images decoded, by a small thread pool that
works ahead while the engine generates) shortly before it is submitted with ``LLM.enqueue``, at
most ``window`` requests are in the engine at once, and the engine is stepped
(``llm_engine.step()``, what ``LLM.wait_for_completion`` does) until one finishes, which makes room
for the next. So host memory is bounded by the window plus the few requests built ahead, not by
the chunk, and a request that fails to build or that vLLM refuses at submission fails alone:
nothing is re-run. A request the engine drops without an answer is a ``ServingUnavailableError`` (its
row stays pending).

An exception raised by the engine itself (``step()``: the engine died) is not a request's fault:
it propagates to the caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from dataflow_mm.common.errors import RowError, ServingUnavailableError

DEFAULT_BUILD_WORKERS = 2  # threads decoding the next requests' images (PIL releases the GIL while decoding)
Outcome = Any  # a vLLM RequestOutput, or the Exception that kept the request from being answered


def is_engine_dead(exc: BaseException) -> bool:
    """vLLM's ``EngineDeadError``: every later request would fail too."""
    return type(exc).__name__ == "EngineDeadError"


def _external_id(request_id: str) -> str:
    """The caller's id of a request: vLLM returns ``"<id>-<8 random chars>"`` from ``enqueue`` but names
    its outputs ``"<id>"`` (unless ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION`` is set)."""
    head, _, tail = request_id.rpartition("-")
    return head if head and len(tail) == 8 else request_id


def submit_windowed(
    llm: Any,
    count: int,
    build: Callable[[int], dict[str, Any]],
    params: Any,
    window: int,
    build_workers: int = DEFAULT_BUILD_WORKERS,
) -> list[Outcome]:
    """Answer requests ``0..count-1``; ``build(i)`` makes request ``i`` shortly before it is enqueued.

    ``build_workers`` threads build the next requests (decode their images) while the engine runs
    and this thread submits and collects: at most ``window`` requests are in the engine and
    ``build_workers`` more are built ahead. Requests are enqueued in order. Returns one outcome per
    request, in order: the finished ``RequestOutput``, or the exception that ``build`` (a
    ``RowError``) or ``LLM.enqueue`` raised for that request alone.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if build_workers < 1:
        raise ValueError(f"build_workers must be >= 1, got {build_workers}")
    outcomes: list[Outcome] = [None] * count
    in_flight: dict[str, int] = {}
    upcoming = iter(range(count))
    ahead: deque[tuple[int, Future[dict[str, Any]]]] = deque()

    with ThreadPoolExecutor(max_workers=build_workers, thread_name_prefix="vllm-build") as pool:

        def build_ahead() -> None:
            while len(ahead) < build_workers:
                index = next(upcoming, None)
                if index is None:
                    return
                ahead.append((index, pool.submit(build, index)))

        def fill() -> None:
            build_ahead()
            while len(in_flight) < window and ahead:
                index, future = ahead.popleft()
                try:
                    request = future.result()  # the engine core runs on its own while this waits
                except RowError as exc:
                    outcomes[index] = exc
                    continue
                finally:
                    build_ahead()
                try:
                    (request_id,) = llm.enqueue([request], params, use_tqdm=False)
                except Exception as exc:  # vLLM refused this request (too long, bad image...): this row only
                    if is_engine_dead(exc):
                        raise
                    outcomes[index] = exc
                    continue
                finally:
                    del request  # the decoded images go with it: only the engine's copy remains
                in_flight[_external_id(str(request_id))] = index

        fill()
        engine = llm.llm_engine
        while in_flight:
            if not engine.has_unfinished_requests():
                for index in in_flight.values():
                    outcomes[index] = ServingUnavailableError("the vLLM engine dropped the request without an answer")
                in_flight.clear()
                break
            for output in engine.step():
                if getattr(output, "finished", False):
                    index = in_flight.pop(_external_id(str(output.request_id)), None)
                    if index is not None:
                        outcomes[index] = output
            fill()
    return outcomes
