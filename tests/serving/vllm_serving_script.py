"""Run ``LocalModelVLMServing_vllm`` on a JSON spec and write what it answered as JSON.

Runs INSIDE the vLLM test environment (``.venv-vllm/bin/python``, made by
``scripts/setup_vllm_env.sh``); ``tests/serving/test_vllm_serving.py`` (main ``.venv``, no vLLM)
starts it as a subprocess and asserts on the JSON::

    .venv-vllm/bin/python tests/serving/vllm_serving_script.py SPEC.json OUT.json

SPEC::

    {"serving": {...LocalModelVLMServing_vllm keyword arguments...},
     "calls": [{"conversations": [<conversation>, ...], "sampling": {...} | null}, ...],
     "restart_after_cleanup": false,
     "measure_rss": false,        # record each call's peak RSS growth (MB) in OUT["rss_growth_mb"]
     "count_tokens": false,       # count each request with the token budget's counter (OUT["counted_tokens"])
     "unchecked_calls": [...]}    # like "calls", but sent past the token budget (vLLM's own checks only)

Conversations are in the OpenAI message form of ``dataflow_mm.serving.base`` with image parts
holding file paths. OUT: ``{"calls": [[<completion>, ...], ...], "describe": ..., "stats": ...,
"engine_started_after_cleanup": bool, "seconds": {...}, "versions": {...}}``.

vLLM's engine core is started with ``spawn``: everything runs under the ``__main__`` guard.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path


def live_children(wait_s: float = 0.0) -> list[str]:
    """This process's live descendants (vLLM's engine core and workers), after up to ``wait_s``.

    multiprocessing's own resource tracker (started by the first ``spawn``, alive until this
    process exits) is not counted.
    """
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for child in psutil.Process().children(recursive=True):
            try:
                command = " ".join(child.cmdline())
                if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in command:
                    alive.append(f"{child.pid}: {command[:200]}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


class PeakRSS:
    """This process's peak resident memory while the block runs, sampled every few milliseconds."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.before = self.peak = self._process.memory_info().rss

    def __enter__(self) -> PeakRSS:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / 2**20


def counted_tokens(serving: object, conversations: list) -> list:
    """Each request's prompt tokens as the token budget counts them (the engine's processor kwargs)."""
    from dataflow_mm.models.processor_loading import load_processor
    from dataflow_mm.serving.messages import split_images, to_pil
    from dataflow_mm.serving.token_budget import PromptTokenCounter

    counter = PromptTokenCounter(load_processor(serving.model_dir), serving.mm_processor_kwargs())
    counts = []
    for conversation in serving.prepare_conversations(conversations):
        messages, sources = split_images(conversation)
        counts.append(counter.exact(counter.render(messages), [to_pil(s) for s in sources]))
    return counts


def main(spec_path: str, out_path: str) -> None:
    import torch
    import transformers
    import vllm

    from dataflow_mm.serving.base import SamplingParams
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    serving = LocalModelVLMServing_vllm(**spec["serving"])
    out: dict = {
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "smoke_test_model_before_start": serving.is_smoke_test_model,
        "calls": [],
        "seconds": {},
    }
    start = time.perf_counter()
    serving.start()
    out["seconds"]["engine_start"] = time.perf_counter() - start
    out["engine_started"] = serving.engine_started
    out["engine_args"] = serving.engine_args()
    out["rss_growth_mb"] = []
    for number, call in enumerate(spec["calls"]):
        sampling = SamplingParams(**call["sampling"]) if call.get("sampling") else None
        start = time.perf_counter()
        with PeakRSS() as rss:
            completions = serving.chat(call["conversations"], sampling)
        out["rss_growth_mb"].append(rss.growth_mb)
        out["seconds"][f"chat_{number}"] = time.perf_counter() - start
        out["calls"].append([{**dataclasses.asdict(c), "truncated": c.truncated} for c in completions])
    if spec.get("count_tokens"):
        out["counted_tokens"] = [counted_tokens(serving, call["conversations"]) for call in spec["calls"]]
    out["unchecked_calls"] = []
    for call in spec.get("unchecked_calls", []):
        completions = serving._chat_batch(call["conversations"], serving.sampling)
        out["unchecked_calls"].append([dataclasses.asdict(c) for c in completions])
    out["describe"] = serving.describe()
    out["stats"] = dataclasses.asdict(serving.stats)
    out["children_before_cleanup"] = live_children()
    start = time.perf_counter()
    serving.cleanup()
    out["seconds"]["cleanup"] = time.perf_counter() - start
    out["engine_started_after_cleanup"] = serving.engine_started
    out["children_after_cleanup"] = live_children(wait_s=10.0)
    if spec.get("restart_after_cleanup"):
        # The next chat starts the engine again and answers the same as before.
        start = time.perf_counter()
        first = spec["calls"][0]
        sampling = SamplingParams(**first["sampling"]) if first.get("sampling") else None
        out["after_restart"] = [dataclasses.asdict(c) for c in serving.chat(first["conversations"], sampling)]
        out["seconds"]["restart_and_chat"] = time.perf_counter() - start
        serving.cleanup()
    Path(out_path).write_text(json.dumps(out, default=str), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} SPEC.json OUT.json")
    main(sys.argv[1], sys.argv[2])
