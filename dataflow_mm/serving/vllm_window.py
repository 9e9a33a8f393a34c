"""One vLLM engine's request window, shared by every call in flight (the chunks of a step).

Answered one call at a time, the engine's batch would shrink at the end of each chunk to the chunk's
last long requests before the next chunk's first is sent. Here the calls of several threads (the step
executor's chunks in flight) feed one window: requests are enqueued in chunk order (an earlier chunk's
before a later one's, whichever thread arrived first: ``common.chunk_order``; calls outside a step in
the order they arrived), so chunks finish roughly in the order they are written, and as soon as any
request finishes the next one, of whichever call, takes its place.

Who talks to the engine: one thread at a time (the driver), whichever waiting caller gets there
first; it enqueues, steps the engine (``llm_engine.step()``) and hands every finished output to the
call it belongs to, until its own call is answered, then the next waiting caller takes over. A caller
whose requests are all answered returns at once, while another thread still drives: its chunk is
written and the next chunk can start. vLLM's ``LLM`` is never used from two threads at once.

What bounds the window (``WindowLimits``): a request count (by default what the engine schedules at
once, its ``max_num_seqs``) and the bytes of prepared inputs (the decoded images of the requests in
the engine), so that host memory is bounded whatever the image sizes; one request is always let in.
``build_workers`` threads decode the next requests while the engine runs, each shortly before it is
sent (``LLM.generate(list)`` would decode a whole batch first), where the host has cores for them
(``default_build_workers``); else the driver builds each request just before it sends it. With
``render_thread``, vLLM's input processing runs on a thread of its own (``serving.vllm_submission``),
so the driver only adds and steps. A request that fails to build or that vLLM refuses fails alone, and
one the engine drops without an answer is a ``ServingUnavailableError`` (its row stays pending).

An exception from the engine itself (``step()``: the engine died) is not a request's fault: it
propagates to the caller that drives, and to every other caller when it drives next.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dataflow_mm.common.chunk_order import current_chunk
from dataflow_mm.common.errors import RowError, ServingUnavailableError
from dataflow_mm.serving.vllm_submission import Prepared, RenderedSubmission, submission_for

Outcome = Any  # a vLLM RequestOutput, or the Exception that kept the request from being answered
DEFAULT_BUILD_WORKERS = 2  # threads decoding the next requests' images (PIL releases the GIL while decoding)
ENGINE_CORES = 2  # cores the engine's own work takes from the host: the engine core's process and the driver


def default_build_workers() -> int:
    """``DEFAULT_BUILD_WORKERS`` where the host has a core for each beside ``ENGINE_CORES``, else 0 (the driver
    builds). On 2 cores the build threads have no core of their own: they took 3.6x the CPU time of building
    on the driver (0.9 s against 0.25 s for 2,048 small images) and took the GIL from the driver whenever
    its tokenizer or image processor let go of it; the generation phase never measured faster with them
    (benchmarks/README.md, "Who decodes the images")."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return DEFAULT_BUILD_WORKERS if cores >= ENGINE_CORES + DEFAULT_BUILD_WORKERS else 0


class InlineBuilds(Executor):
    """The build pool where there are no build threads: each request is built on the driver, when submitted."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the future carries it, as a thread pool's would
            done.set_exception(exc)
        return done


def is_engine_dead(exc: BaseException) -> bool:
    """vLLM's ``EngineDeadError``: every later request would fail too."""
    return type(exc).__name__ == "EngineDeadError"


def external_id(request_id: str) -> str:
    """The caller's id of a request: vLLM returns ``"<id>-<8 random chars>"`` from ``enqueue`` but names
    its outputs ``"<id>"`` (unless ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION`` is set)."""
    head, _, tail = request_id.rpartition("-")
    return head if head and len(tail) == 8 else request_id


def prepared_bytes(request: dict[str, Any]) -> int:
    """Bytes of a built request's inputs held in host memory (its decoded images; the prompt text)."""
    total = len(str(request.get("prompt", "")))
    images = (request.get("multi_modal_data") or {}).get("image")
    for image in images if isinstance(images, list) else [images]:
        nbytes = getattr(image, "nbytes", None)
        if nbytes is None and hasattr(image, "size") and hasattr(image, "getbands"):  # a PIL image
            nbytes = image.size[0] * image.size[1] * len(image.getbands())
        total += int(nbytes or 0)
    return total


@dataclass(frozen=True)
class WindowLimits:
    """How much may be in the engine at once: ``requests`` (count) and ``prepared_bytes`` (host memory)."""

    requests: int
    prepared_bytes: int

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"window must be >= 1, got {self.requests}")
        if self.prepared_bytes < 1:
            raise ValueError(f"prepared_bytes must be >= 1, got {self.prepared_bytes}")


def engine_max_num_seqs(llm: Any) -> int | None:
    """How many sequences a started engine schedules at once (``max_num_seqs`` as vLLM resolved it), or None."""
    config = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "scheduler_config", None)
    value = getattr(config, "max_num_seqs", None)
    return value if isinstance(value, int) and value > 0 else None


def available_host_bytes() -> int | None:
    """The host memory available now (Linux ``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def window_limits(llm: Any, requests: int | None, prepared: int | None) -> WindowLimits:
    """The window of a started engine: the given bounds, else its ``max_num_seqs`` and a share of host memory."""
    from dataflow_mm.serving.vllm_engine_args import DEFAULT_PREPARED_BYTES_SHARE, FALLBACK_MAX_REQUESTS_IN_FLIGHT

    if requests is None:
        requests = engine_max_num_seqs(llm) or FALLBACK_MAX_REQUESTS_IN_FLIGHT
    if prepared is None:
        available = available_host_bytes()
        prepared = int(available * DEFAULT_PREPARED_BYTES_SHARE) if available else 4 << 30
    return WindowLimits(int(requests), max(1, int(prepared)))


@dataclass
class WindowTimes:
    """Seconds spent in each part: ``enqueue`` on the driver (handing requests to the engine, with vLLM's
    input processing where it runs there), ``render`` on the render thread (the input processing)."""

    enqueue: float = 0.0
    render: float = 0.0
    step: float = 0.0
    build_wait: float = 0.0
    enqueued: int = 0
    most_in_flight: int = 0
    most_prepared_bytes: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "enqueue_s": round(self.enqueue, 4),
            "render_s": round(self.render, 4),
            "step_s": round(self.step, 4),
            "build_wait_s": round(self.build_wait, 4),
            "enqueued": self.enqueued,
            "most_in_flight": self.most_in_flight,
            "most_prepared_bytes": self.most_prepared_bytes,
        }


@dataclass(eq=False)
class _Call:
    """One caller's requests ``0..count-1`` and their outcomes; ``order``: its place in line."""

    count: int
    build: Callable[[int], dict[str, Any]]
    params: Any
    order: tuple[int, int]
    outcomes: list[Outcome] = field(init=False)
    unanswered: int = field(init=False)
    next_index: int = 0

    def __post_init__(self) -> None:
        self.outcomes = [None] * self.count
        self.unanswered = self.count

    def answer(self, index: int, outcome: Outcome) -> None:
        self.outcomes[index] = outcome
        self.unanswered -= 1


class EngineWindow:
    """The requests of every caller of one ``vllm.LLM``, at most ``limits`` of them in the engine."""

    def __init__(
        self, llm: Any, limits: WindowLimits, build_workers: int | None = None, render_thread: bool = False
    ) -> None:
        if build_workers is None:
            build_workers = default_build_workers()
        if build_workers < 0:
            raise ValueError(f"build_workers must be >= 0, got {build_workers}")
        self.llm = llm
        self.limits = limits
        self.build_workers = build_workers
        self.times = WindowTimes()
        self._turn = threading.Condition()  # a waiting caller wakes when the driver leaves or its call is answered
        self._driving = False  # whether a thread talks to the engine now (under ``_turn``)
        self._calls: deque[_Call] = deque()  # calls with requests not built yet, in chunk order
        self._arrivals = itertools.count()
        self.submission = submission_for(llm, render_thread)
        self._ahead_limit = max(build_workers, 1, min(self.submission.ahead, limits.requests))
        self._ahead: deque[tuple[_Call, int, Future[Prepared]]] = deque()
        self._in_flight: dict[str, tuple[_Call, int, int]] = {}  # external id -> (call, index, prepared bytes)
        self._in_flight_bytes = 0
        self._state = threading.Lock()
        self._pool: Executor | None = None

    def submit(self, count: int, build: Callable[[int], dict[str, Any]], params: Any) -> list[Outcome]:
        """Answer requests ``0..count-1`` of one call; ``build(i)`` makes request ``i`` shortly before it is enqueued.

        Returns one outcome per request, in order: the finished ``RequestOutput``, or the exception that
        ``build`` (a ``RowError``) or ``LLM.enqueue`` raised for that request alone.
        """
        if count == 0:
            return []
        chunk = current_chunk()
        call = _Call(count, build, params, (sys.maxsize if chunk is None else chunk, next(self._arrivals)))
        with self._state:  # in line after every call with an earlier chunk (or the same chunk, come earlier)
            place = len(self._calls)
            while place and self._calls[place - 1].order > call.order:
                place -= 1
            self._calls.insert(place, call)
        while True:
            with self._turn:
                while self._driving and call.unanswered:
                    self._turn.wait()
                if not call.unanswered:
                    return call.outcomes
                self._driving = True
            try:
                self._drive(call)
            finally:
                with self._turn:
                    self._driving = False
                    self._turn.notify_all()

    def close(self) -> None:
        """Stop the build and render threads (the engine is the caller's)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self.submission.close()

    @property
    def render_thread(self) -> bool:
        """Whether vLLM's input processing runs on the render thread (else on the driver, in ``LLM.enqueue``)."""
        return isinstance(self.submission, RenderedSubmission)

    # -- the driving thread ------------------------------------------------------------------------

    def _drive(self, call: _Call) -> None:
        """Enqueue and step until ``call`` is answered (the other calls' answers are handed on meanwhile)."""
        engine = self.llm.llm_engine
        try:
            self._fill()
            while call.unanswered:
                if not self._in_flight:  # every request still to come failed to build, or is being built
                    self._fill()
                    if not self._in_flight and not self._ahead and not self._pending() and call.unanswered:
                        raise RuntimeError("vLLM window: requests neither in flight nor waiting to be built")
                    continue
                if not engine.has_unfinished_requests():
                    dropped = ServingUnavailableError("the vLLM engine dropped the request without an answer")
                    for other, index, _ in self._in_flight.values():
                        self._answer(other, index, dropped)
                    self._in_flight.clear()
                    self._in_flight_bytes = 0
                    continue
                started = time.perf_counter()
                outputs = engine.step()
                self.times.step += time.perf_counter() - started
                for output in outputs:
                    if getattr(output, "finished", False):
                        self._finished(output)
                self._fill()
        except BaseException:
            self._drop_pending(call)
            raise

    def _finished(self, output: Any) -> None:
        entry = self._in_flight.pop(external_id(str(output.request_id)), None)
        if entry is not None:
            owner, index, nbytes = entry
            self._in_flight_bytes -= nbytes
            self._answer(owner, index, output)

    def _answer(self, call: _Call, index: int, outcome: Outcome) -> None:
        """Record an outcome; a call answered in full wakes its caller (who may be waiting on the driver)."""
        call.answer(index, outcome)
        if not call.unanswered:
            with self._turn:
                self._turn.notify_all()

    def _pending(self) -> bool:
        with self._state:
            return bool(self._calls)

    def _build_ahead(self) -> None:
        if self._pool is None:
            self._pool = (
                ThreadPoolExecutor(max_workers=self.build_workers, thread_name_prefix="vllm-build")
                if self.build_workers
                else InlineBuilds()
            )
        while len(self._ahead) < self._ahead_limit:
            with self._state:  # only the pick: an inline build must not keep other callers from getting in line
                if not self._calls:
                    return
                call = self._calls[0]
                index = call.next_index
                call.next_index += 1
                if call.next_index >= call.count:
                    self._calls.popleft()
            prepared = self.submission.prepare(self._pool, functools.partial(call.build, index), prepared_bytes)
            self._ahead.append((call, index, prepared))

    def _room_for(self, nbytes: int) -> bool:
        if not self._in_flight:
            return True  # one request always goes in, however large
        if len(self._in_flight) >= self.limits.requests:
            return False
        return self._in_flight_bytes + nbytes <= self.limits.prepared_bytes

    def _fill(self) -> None:
        """Send prepared requests, oldest call first, while the window has room."""
        self._build_ahead()
        while self._ahead and (not self._in_flight or len(self._in_flight) < self.limits.requests):
            call, index, future = self._ahead[0]
            started = time.perf_counter()
            try:
                prepared = future.result()  # the engine core runs on its own while this waits
            except RowError as exc:
                self._ahead.popleft()
                self._answer(call, index, exc)
                self._build_ahead()
                continue
            finally:
                self.times.build_wait += time.perf_counter() - started
            if prepared.refused is None and not self._room_for(prepared.nbytes):
                return
            self._ahead.popleft()
            self._build_ahead()
            self.times.render += prepared.render_s
            if prepared.refused is not None:  # vLLM's input processing refused it: this row only
                self._answer(call, index, prepared.refused)
                continue
            nbytes = prepared.nbytes
            started = time.perf_counter()
            try:
                request_id = self.submission.add(prepared, call.params)
            except Exception as exc:  # vLLM refused this request (too long, bad image...): this row only
                if is_engine_dead(exc):
                    raise
                self._answer(call, index, exc)
                continue
            finally:
                self.times.enqueue += time.perf_counter() - started
                prepared.payload = None  # the decoded images go with it: only the engine's copy remains
            self._in_flight[external_id(request_id)] = (call, index, nbytes)
            self._in_flight_bytes += nbytes
            times = self.times
            times.enqueued += 1
            times.most_in_flight = max(times.most_in_flight, len(self._in_flight))
            times.most_prepared_bytes = max(times.most_prepared_bytes, self._in_flight_bytes)

    def _drop_pending(self, failed: _Call) -> None:
        """The engine failed while ``failed`` drove: its requests not yet enqueued are not built any further."""
        with self._state:
            if failed in self._calls:
                self._calls.remove(failed)
        for _, _, future in [entry for entry in self._ahead if entry[0] is failed]:
            future.cancel()
        self._ahead = deque(entry for entry in self._ahead if entry[0] is not failed)
