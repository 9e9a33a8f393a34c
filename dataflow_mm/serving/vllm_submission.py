"""How a built request reaches a vLLM engine: its input processing split from the thread that steps the engine.

``LLM.enqueue`` runs vLLM's input processing (the chat prompt tokenized, each image through the
model's processor) on the thread that calls it, which is also the thread that steps the engine: on a
fast GPU the engine then waits on that one thread. vLLM (0.32 and later) splits the two:
``Renderer.render_cmpl`` makes the ``EngineInput`` (the processing) and ``LLMEngine.add_request``
takes it (validation and the hand-over to the engine core, a fifth of the time). ``RenderedSubmission``
renders on one thread of its own while the window's driver adds and steps; one thread, in the order the
requests will be added, because vLLM's multimodal cache on this side mirrors the engine core's and
expects items in the order the engine receives them.

``EnqueueSubmission`` (``LLM.enqueue`` on the driver) is the default: on vLLM's CPU build the render
thread measured 1.3x slower (the engine's processes take the cores, and the two threads contend for the
GIL); on a GPU it is unmeasured (``benchmarks/gpu_smoke.py --model`` runs both). It is also used where
vLLM has no split (older vLLM, a test double).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Prepared:
    """A request ready to add: ``payload`` (the request, or its ``EngineInput``), or why it cannot be sent."""

    nbytes: int
    payload: Any = None
    refused: Exception | None = None
    render_s: float = 0.0


class Submission(Protocol):
    """Prepares built requests off the driver, and adds them to the engine on the driver.

    ``ahead``: how many requests the window keeps prepared ahead of the engine, so that the driver
    finds ready ones after each step."""

    ahead: int

    def prepare(
        self, builders: Executor, build: Callable[[], dict[str, Any]], nbytes_of: Callable[[Any], int]
    ) -> Future[Prepared]: ...

    def add(self, prepared: Prepared, params: Any) -> str: ...

    def close(self) -> None: ...


class EnqueueSubmission:
    """``LLM.enqueue`` on the driver: the input processing runs there."""

    ahead = 0

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def prepare(
        self, builders: Executor, build: Callable[[], dict[str, Any]], nbytes_of: Callable[[Any], int]
    ) -> Future[Prepared]:
        def built() -> Prepared:
            request = build()
            return Prepared(nbytes_of(request), request)

        return builders.submit(built)

    def add(self, prepared: Prepared, params: Any) -> str:
        (request_id,) = self.llm.enqueue([prepared.payload], params, use_tqdm=False)
        return str(request_id)

    def close(self) -> None:
        pass


class RenderedSubmission:
    """``Renderer.render_cmpl`` on one render thread, in order; ``LLMEngine.add_request`` on the driver."""

    ahead = 16  # a step of a large batch takes tens of ms: the render thread fills this meanwhile

    def __init__(self, llm: Any) -> None:
        self.renderer = llm.renderer
        self.engine = llm.llm_engine
        self._ids = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-render")
        self._final_only = _final_only_kind()

    def prepare(
        self, builders: Executor, build: Callable[[], dict[str, Any]], nbytes_of: Callable[[Any], int]
    ) -> Future[Prepared]:
        return self._pool.submit(self._render, builders.submit(build), nbytes_of)

    def _render(self, built: Future[dict[str, Any]], nbytes_of: Callable[[Any], int]) -> Prepared:
        request = built.result()  # a RowError (the row's image or template) is this future's exception
        nbytes = nbytes_of(request)
        started = time.perf_counter()
        try:
            (engine_input,) = self.renderer.render_cmpl([request])
        except Exception as exc:  # vLLM refused the request (an image its processor cannot take): this row only
            return Prepared(nbytes, refused=exc, render_s=time.perf_counter() - started)
        return Prepared(nbytes, engine_input, render_s=time.perf_counter() - started)

    def add(self, prepared: Prepared, params: Any) -> str:
        if self._final_only is not None and getattr(params, "output_kind", None) is not self._final_only:
            params.output_kind = self._final_only  # only the finished output is read (as LLM.enqueue sets it)
        return str(self.engine.add_request(f"dataflow-mm-{next(self._ids)}", prepared.payload, params))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _final_only_kind() -> Any:
    try:
        from vllm.sampling_params import RequestOutputKind
    except ImportError:  # pragma: no cover - vLLM without it has no renderer either
        return None
    return RequestOutputKind.FINAL_ONLY


def submission_for(llm: Any, render_thread: bool) -> Submission:
    """The split route where asked for and this vLLM has it (a renderer with ``render_cmpl``), else ``LLM.enqueue``."""
    if not render_thread:
        return EnqueueSubmission(llm)
    renderer = getattr(llm, "renderer", None)
    engine = getattr(llm, "llm_engine", None)
    if callable(getattr(renderer, "render_cmpl", None)) and callable(getattr(engine, "add_request", None)):
        return RenderedSubmission(llm)
    return EnqueueSubmission(llm)
