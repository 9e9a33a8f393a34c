"""A stand-in for ``vllm.LLM`` as far as the request window uses it (``enqueue``, ``llm_engine.step``):
each step finishes the oldest request and records how many were in flight, so tests can check the
batch the engine would have run. Shared by the window's and the submission routes' tests."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np


class Engine:
    """``LLM.llm_engine``: each ``step`` finishes the oldest request and records how many were in flight."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.model_config = SimpleNamespace(max_model_len=4096, get_diff_sampling_param=dict)
        self.vllm_config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=llm.max_num_seqs))
        self.batches: list[tuple[int, int]] = []  # (requests in flight, requests enqueued so far) at each step

    def has_unfinished_requests(self) -> bool:
        return bool(self.llm.in_flight)

    def step(self) -> list[Any]:
        assert self.llm.lock.acquire(blocking=False), "the engine is used from two threads at once"
        try:
            self.batches.append((len(self.llm.in_flight), len(self.llm.enqueued)))
            threading.Event().wait(self.llm.step_seconds)  # a real engine step takes a while
            request_id, prompt = next(iter(self.llm.in_flight.items()))
            del self.llm.in_flight[request_id]
            out = SimpleNamespace(text=f"re: {prompt}", token_ids=[1, 2], finish_reason="stop")
            return [SimpleNamespace(request_id=request_id, finished=True, prompt_token_ids=[0], outputs=[out])]
        finally:
            self.llm.lock.release()

    def shutdown(self) -> None:
        pass


class LLM:
    """``vllm.LLM`` as far as the window uses it; ids come back randomized, as vLLM returns them."""

    instances: ClassVar[list[LLM]] = []
    max_num_seqs = 6
    step_seconds = 0.0

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.lock = threading.Lock()
        self.enqueued: list[str] = []
        self.in_flight: dict[str, str] = {}
        self.bytes_in_flight: dict[str, int] = {}
        self.most_bytes = 0
        self.llm_engine = Engine(self)
        LLM.instances.append(self)

    def enqueue(self, requests: list[dict[str, Any]], params: Any, use_tqdm: bool = True) -> list[str]:
        assert self.lock.acquire(blocking=False), "the engine is used from two threads at once"
        try:
            (request,) = requests
            request_id = str(len(self.enqueued))
            self.enqueued.append(request["prompt"])
            self.in_flight[request_id] = request["prompt"]
            return [f"{request_id}-abcdefgh"]
        finally:
            self.lock.release()


def request(text: str, pixels: int = 0) -> dict[str, Any]:
    built: dict[str, Any] = {"prompt": text}
    if pixels:
        built["multi_modal_data"] = {"image": np.zeros((pixels, 1, 3), dtype=np.uint8)}
    return built
