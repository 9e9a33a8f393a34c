"""vLLM across chunk boundaries: a step in small chunks vs one chunk vs one ``LLM.generate``.

    DATAFLOW_MM_TINY_DIR=.tiny_models VLLM_CPU_KVCACHE_SPACE=2 \\
        .venv-vllm/bin/python benchmarks/vllm_chunks.py [--rows 2048] [--chunk_size 32] [--repeats 2]

One engine (the tiny random-weight Qwen2.5-VL of ``dataflow_mm.models.tiny``, greedy, float32) serves
every run, so the engine start is not measured; a warm-up step and generate (other images) run first.
Each row is its own image and question, and every run gets its own images (no run answers from the
image or prefix cache another filled). Measured, alternating (a, b, c, d, a, b, c, d, ...) on fresh
caches:

* ``chunked``: the PromptedVQAGenerator step at ``--chunk_size`` (the chunks share the request window);
* ``drained``: the same, one chunk at a time (``concurrent_chunks = 1``: what the code did before);
* ``one_chunk``: the same step with all rows in one chunk;
* ``generate``: one ``LLM.generate`` over the same requests, built (images decoded, prompts rendered)
  by the step's own code inside the clock, as the step's generation phase builds them.

``chunked/one_chunk`` compares whole steps; ``one_chunk/generate`` compares the step's generation phase
(first call into the engine's window to the last answer: decoding images, ``enqueue``, stepping) with
the one ``LLM.generate`` (its own input processing and run).

For the step runs the time is the step's own (``StepResult.seconds``: read, budget check, generation,
writes) and the window's split (``enqueue``: vLLM's input processing on the submitting thread). Every
run also says where the CPU went (Linux): ``pipeline_cpu_s``, all threads of this process (the step, the
window's driver, vLLM's input processing and output thread), and ``engine_cpu_s``, the engine's own
processes (engine core and worker). When ``pipeline_cpu_s`` is close to the wall time, the engine waits
on the pipeline's one Python process, not the other way round. Prints one JSON with every run and the
median ratios ``chunked / one_chunk`` and ``one_chunk / generate``.
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

from cpu_time import descendants_cpu_seconds, process_cpu_seconds  # noqa: E402


def make_rows(folder: Path, rows: int, size: tuple[int, int], seed: int = 0) -> Path:
    """``rows`` distinct small PNG images and one question each, as a JSONL table (``seed``: other pixels)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        path = folder / f"img_{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        lines.append(json.dumps({"id": i, "image": str(path), "question": f"What is in picture {i}?"}))
    table = folder / "rows.jsonl"
    table.write_text("\n".join(lines) + "\n")
    return table


def cpu_accounted(run: Any, *args: Any) -> dict[str, Any]:
    """``run(*args)``'s result with the CPU seconds of this process and of the engine's processes meanwhile."""
    pipeline, engine = process_cpu_seconds(), descendants_cpu_seconds()
    result = run(*args)
    result["pipeline_cpu_s"] = round(process_cpu_seconds() - pipeline, 3)
    after = descendants_cpu_seconds()
    result["engine_cpu_s"] = None if engine is None or after is None else round(after - engine, 3)
    return result


def started_tiny_serving(max_tokens: int, **settings: Any) -> Any:
    """The vLLM serving of the tiny Qwen2.5-VL (greedy, float32), its engine started."""
    from dataflow_mm.models.tiny import tiny_model_path
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

    serving = LocalModelVLMServing_vllm(
        str(tiny_model_path("qwen2_5_vl")),
        vllm_dtype="float32",
        vllm_max_model_len=2048,
        vllm_enforce_eager=True,
        vllm_temperature=0.0,
        vllm_max_tokens=max_tokens,
        **settings,
    )
    serving.start()
    return serving


def run_step(serving: Any, table: Path, cache: Path, chunk_size: int) -> dict[str, Any]:
    from dataflow_mm import FileStorage, PromptedVQAGenerator

    storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="b", chunk_size=chunk_size)
    window = serving._window
    before = window.times.as_dict() if window is not None else {}
    spans: list[tuple[float, float]] = []
    chat_batch = serving._chat_batch

    def timed(*args: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        try:
            return chat_batch(*args, **kwargs)
        finally:
            spans.append((begun, time.perf_counter()))

    serving._chat_batch = timed  # the generation phase: from the first request built to the last answer
    started = time.perf_counter()
    try:
        PromptedVQAGenerator(serving).run(storage.step(), input_prompt_key="question", input_image_key="image")
    finally:
        del serving._chat_batch
    wall = time.perf_counter() - started
    generation = max(end for _, end in spans) - min(begin for begin, _ in spans)
    manifest_rows = (cache / "b_step1.jsonl").read_text().splitlines()
    after = serving._window.times.as_dict()
    parts = ("enqueue_s", "render_s", "step_s", "build_wait_s", "enqueued")
    delta = {k: round(after[k] - before.get(k, 0), 4) for k in parts}
    errors = sum(1 for line in manifest_rows if json.loads(line).get("error"))
    return {
        "seconds": round(wall, 3),
        "generation_s": round(generation, 3),
        "rows": len(manifest_rows),
        "errors": errors,
        **delta,
    }


def run_generate(serving: Any, table: Path) -> dict[str, Any]:
    """One ``LLM.generate`` over the requests the step sends, built (images decoded, prompts rendered) by the
    same code inside the clock, as the step's generation phase builds them (``build_s``: that part)."""
    from dataflow_mm.serving.messages import build_conversation
    from dataflow_mm.serving.vllm_io import sampling_params

    rows = [json.loads(line) for line in table.read_text().splitlines()]
    conversations = serving.prepare_conversations([build_conversation(row["question"], [row["image"]]) for row in rows])
    params = sampling_params(serving._vllm, serving._llm, serving.sampling)
    started = time.perf_counter()
    requests = [serving._request(c) for c in conversations]
    built = time.perf_counter() - started
    outputs = serving._llm.generate(requests, params, use_tqdm=False)
    wall = time.perf_counter() - started
    errors = sum(1 for o in outputs if not o.finished)
    return {
        "seconds": round(wall, 3),
        "generation_s": round(wall, 3),
        "build_s": round(built, 3),
        "rows": len(outputs),
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--chunk_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max_tokens", type=int, default=16)
    parser.add_argument("--image_size", type=int, nargs=2, default=(64, 48))
    parser.add_argument("--modes", default="chunked,drained,one_chunk,generate")
    parser.add_argument("--switch_interval", type=float, default=None, help="sys.setswitchinterval (s) to try")
    parser.add_argument("--render_thread", choices=("yes", "no"), default="no", help="vLLM's input processing")
    parser.add_argument(
        "--build_workers", type=int, default=None, help="threads decoding images (default: the serving's, by cores)"
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    serving = started_tiny_serving(
        args.max_tokens, vllm_render_thread=args.render_thread == "yes", vllm_build_workers=args.build_workers
    )
    cls = type(serving)
    adaptive = cls.concurrent_chunks
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes.split(",")}
    with tempfile.TemporaryDirectory(prefix="vllm_chunks_") as tmp:
        size = tuple(args.image_size)
        warm = make_rows(Path(tmp) / "warm", min(args.rows, 2 * args.chunk_size), size, seed=10**6)
        run_step(serving, warm, Path(tmp) / "warm_cache", args.chunk_size)  # first-use costs, not measured
        run_generate(serving, warm)
        for repeat in range(args.repeats):
            for number, mode in enumerate(runs):
                cache = Path(tmp) / f"{mode}_{repeat}"
                seed = 1 + repeat * 100 + number
                table = make_rows(Path(tmp) / f"data_{mode}_{repeat}", args.rows, size, seed)
                if mode == "generate":
                    result = cpu_accounted(run_generate, serving, table)
                elif mode == "drained":
                    cls.concurrent_chunks = 1  # type: ignore[assignment]
                    try:
                        result = cpu_accounted(run_step, serving, table, cache, args.chunk_size)
                    finally:
                        cls.concurrent_chunks = adaptive  # type: ignore[assignment]
                else:
                    chunk_size = args.rows if mode == "one_chunk" else args.chunk_size
                    result = cpu_accounted(run_step, serving, table, cache, chunk_size)
                runs[mode].append(result)
                print(mode, result, file=sys.stderr, flush=True)
    window = serving.window_report()
    render_thread = serving._window.render_thread
    build_workers = serving._window.build_workers
    serving.cleanup()
    median = {mode: statistics.median(r["seconds"] for r in results) for mode, results in runs.items()}
    generation = {mode: statistics.median(r["generation_s"] for r in results) for mode, results in runs.items()}
    ratios = {}
    for a, b in (("chunked", "one_chunk"), ("drained", "one_chunk")):
        if a in median and b in median:
            ratios[f"{a}/{b} (step)"] = round(median[a] / median[b], 3)
    for a in ("one_chunk", "chunked", "drained"):
        if a in generation and "generate" in generation:
            ratios[f"{a}/generate (generation phase)"] = round(generation[a] / generation["generate"], 3)
            paired = [x["generation_s"] / y["generation_s"] for x, y in zip(runs[a], runs["generate"], strict=True)]
            ratios[f"{a}/generate (generation phase, median per repeat)"] = round(statistics.median(paired), 3)
    cpu = {
        mode: {
            part: statistics.median(r[part] for r in results) if results[0][part] is not None else None
            for part in ("pipeline_cpu_s", "engine_cpu_s")
        }
        for mode, results in runs.items()
        if results
    }
    enqueue_share = {
        mode: round(statistics.median(r["enqueue_s"] / r["seconds"] for r in results), 3)
        for mode, results in runs.items()
        if results and "enqueue_s" in results[0]
    }
    text = json.dumps(
        {
            "rows": args.rows,
            "chunk_size": args.chunk_size,
            "max_tokens": args.max_tokens,
            "window": {k: window[k] for k in ("max_requests", "max_prepared_bytes", "most_in_flight")},
            "render_thread": render_thread,
            "build_workers": build_workers,
            "median_seconds": median,
            "median_generation_seconds": generation,
            "median_cpu_seconds": cpu,
            "ratios": ratios,
            "enqueue_share_of_step": enqueue_share,
            "runs": runs,
            "switch_interval": sys.getswitchinterval(),
        },
        indent=1,
    )
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
