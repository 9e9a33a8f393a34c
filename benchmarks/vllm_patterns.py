"""vLLM's own API, three ways to feed one engine the same requests, without any of this project's window.

    DATAFLOW_MM_TINY_DIR=.tiny_models VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 \\
        .venv-vllm/bin/python benchmarks/vllm_patterns.py [--rows 2048] [--window 256] [--repeats 3]

Answers the question ``vllm_chunks.py`` leaves: how much of the gap between a step's generation phase
and one ``LLM.generate`` comes from feeding the engine a window at a time rather than all at once.
The requests (distinct images, one question each) are built by the vLLM serving's own code before the
clock; then, alternating, on fresh images each time:

* ``generate``: one ``LLM.generate`` over all of them (its adding phase timed: ``add_s``);
* ``enqueue_all``: ``LLM.enqueue`` one request at a time for all of them, then ``llm_engine.step()``
  until every one is answered;
* ``window``: ``LLM.enqueue`` one at a time while fewer than ``--window`` are unanswered, stepping the
  engine in between (the pattern of the project's request window, with no threads).

Prints one JSON: each run's seconds and adding seconds, and the medians' ratios to ``generate``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def build_requests(serving: Any, folder: Path, rows: int, seed: int) -> list[dict[str, Any]]:
    from vllm_chunks import make_rows

    from dataflow_mm.serving.messages import build_conversation

    table = make_rows(folder, rows, (64, 48), seed=seed)
    lines = [json.loads(line) for line in table.read_text().splitlines()]
    conversations = [build_conversation(row["question"], [row["image"]]) for row in lines]
    return [serving._request(c) for c in serving.prepare_conversations(conversations)]


def run_generate(llm: Any, requests: list[dict[str, Any]], params: Any) -> dict[str, float]:
    add = llm._render_and_add_requests
    spent: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return add(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    llm._render_and_add_requests = timed
    started = time.perf_counter()
    try:
        llm.generate(requests, params, use_tqdm=False)
    finally:
        del llm._render_and_add_requests
    return {"seconds": time.perf_counter() - started, "add_s": sum(spent)}


def run_enqueued(llm: Any, requests: list[dict[str, Any]], params: Any, window: int | None) -> dict[str, float]:
    engine = llm.llm_engine
    started = time.perf_counter()
    adding = 0.0
    sent = answered = 0
    while answered < len(requests):
        while sent < len(requests) and (window is None or sent - answered < window):
            begun = time.perf_counter()
            llm.enqueue([requests[sent]], params, use_tqdm=False)
            adding += time.perf_counter() - begun
            sent += 1
        answered += sum(1 for output in engine.step() if output.finished)
    return {"seconds": time.perf_counter() - started, "add_s": adding}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_tokens", type=int, default=16)
    args = parser.parse_args()

    from vllm_chunks import started_tiny_serving

    from dataflow_mm.serving.vllm_io import sampling_params

    serving = started_tiny_serving(args.max_tokens)
    llm = serving._llm
    params = sampling_params(serving._vllm, llm, serving.sampling)
    runs: dict[str, list[dict[str, float]]] = {"generate": [], "enqueue_all": [], "window": []}
    with tempfile.TemporaryDirectory(prefix="vllm_patterns_") as tmp:
        llm.generate(build_requests(serving, Path(tmp) / "warm", 64, 10**6), params, use_tqdm=False)
        for repeat in range(args.repeats):
            for number, mode in enumerate(runs):
                folder = Path(tmp) / f"{mode}_{repeat}"
                requests = build_requests(serving, folder, args.rows, 1 + repeat * 10 + number)
                if mode == "generate":
                    result = run_generate(llm, requests, params)
                else:
                    result = run_enqueued(llm, requests, params, args.window if mode == "window" else None)
                runs[mode].append({k: round(v, 3) for k, v in result.items()})
                print(mode, runs[mode][-1], file=sys.stderr, flush=True)
    serving.cleanup()
    median = {mode: statistics.median(r["seconds"] for r in results) for mode, results in runs.items()}
    print(
        json.dumps(
            {
                "rows": args.rows,
                "window": args.window,
                "median_seconds": median,
                "ratio_to_generate": {m: round(v / median["generate"], 3) for m, v in median.items()},
                "runs": runs,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
