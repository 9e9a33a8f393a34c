"""How built requests reach a vLLM engine (``serving.vllm_submission``): with the render thread (where
vLLM offers the split), its input processing (``Renderer.render_cmpl``) runs on one thread, in the order
the requests are then added (``LLMEngine.add_request``) by the thread that steps the engine; a request the
renderer refuses fails alone; by default, or without the split, ``LLM.enqueue`` is used. The real engine
is in ``test_gpu_smoke.py`` (stage 1 runs with the render thread)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from dataflow_mm.serving.vllm_submission import EnqueueSubmission, RenderedSubmission, submission_for
from dataflow_mm.serving.vllm_window import EngineWindow, WindowLimits
from tests.support.stand_in_vllm import LLM, request


class Renderer:
    """``LLM.renderer``: records the thread and order of each render; refuses prompts holding ``REFUSE``."""

    def __init__(self) -> None:
        self.rendered: list[tuple[str, str]] = []  # (prompt, thread name)

    def render_cmpl(self, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        (prompt,) = prompts
        if "REFUSE" in prompt["prompt"]:
            raise ValueError("the image processor cannot take this image")
        threading.Event().wait(0.002)  # the processor's work
        self.rendered.append((prompt["prompt"], threading.current_thread().name))
        return [{"type": "token", "prompt": prompt["prompt"], "prompt_token_ids": [1, 2, 3]}]


class SplitLLM(LLM):
    """A vLLM with the split: ``renderer.render_cmpl`` and ``llm_engine.add_request``; ``enqueue`` must not run."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.renderer = Renderer()
        self.added_from: set[str] = set()
        self.llm_engine.add_request = self.add_request  # type: ignore[attr-defined]

    def enqueue(self, requests: list[dict[str, Any]], params: Any, use_tqdm: bool = True) -> list[str]:
        raise AssertionError("LLM.enqueue is not used where vLLM splits rendering from adding")

    def add_request(self, request_id: str, engine_input: dict[str, Any], params: Any) -> str:
        assert engine_input["type"] == "token", "the rendered input is what is added"
        assert self.lock.acquire(blocking=False), "the engine is used from two threads at once"
        try:
            self.added_from.add(threading.current_thread().name)
            self.enqueued.append(engine_input["prompt"])
            self.in_flight[request_id] = engine_input["prompt"]
            return f"{request_id}-abcdefgh"
        finally:
            self.lock.release()


def test_vllm_input_processing_runs_on_the_render_thread_in_the_order_requests_are_added() -> None:
    llm = SplitLLM()
    window = EngineWindow(llm, WindowLimits(4, 1 << 30), render_thread=True)
    assert isinstance(window.submission, RenderedSubmission)
    texts = [f"r{i}" for i in range(12)]
    outcomes = window.submit(len(texts), lambda i: request(texts[i]), SimpleNamespace(output_kind=None))
    window.close()
    assert [o.outputs[0].text for o in outcomes] == [f"re: {t}" for t in texts]
    assert [prompt for prompt, _ in llm.renderer.rendered] == texts == llm.enqueued  # rendered in the order added
    assert {thread for _, thread in llm.renderer.rendered} == {"vllm-render_0"}  # one thread, not the driver's
    assert llm.added_from == {threading.current_thread().name}
    assert window.times.render > 0 and window.times.enqueued == 12


def test_a_request_the_renderer_refuses_fails_alone() -> None:
    llm = SplitLLM()
    window = EngineWindow(llm, WindowLimits(2, 1 << 30), render_thread=True)
    texts = ["a", "b", "REFUSE c", "d"]
    outcomes = window.submit(len(texts), lambda i: request(texts[i]), SimpleNamespace(output_kind=None))
    window.close()
    assert isinstance(outcomes[2], ValueError)
    assert [o.outputs[0].text for i, o in enumerate(outcomes) if i != 2] == ["re: a", "re: b", "re: d"]
    assert llm.enqueued == ["a", "b", "d"]


def test_by_default_or_without_the_split_requests_go_through_llm_enqueue() -> None:
    assert isinstance(submission_for(LLM(), render_thread=True), EnqueueSubmission)
    assert isinstance(submission_for(SplitLLM(), render_thread=False), EnqueueSubmission)
    assert isinstance(submission_for(SplitLLM(), render_thread=True), RenderedSubmission)
    assert isinstance(EngineWindow(SplitLLM(), WindowLimits(2, 1 << 30)).submission, EnqueueSubmission)
