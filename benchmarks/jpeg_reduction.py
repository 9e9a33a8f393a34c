"""Large JPEG photos on the vLLM path: decoded whole vs at the reduced scale the processor allows.

    DATAFLOW_MM_TINY_DIR=.tiny_models VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 \\
        .venv-vllm/bin/python benchmarks/jpeg_reduction.py [--photos 16] [--size 4000 3000] [--repeats 3] [--out r.json]

The work the thread feeding a vLLM engine does per photo before the engine sees it: the request built
by the vLLM serving's own ``_request`` (the JPEG decoded, whole or reduced: ``serving.jpeg_reduction``)
and vLLM's input processing of it (``Renderer.render_cmpl``: the Qwen2.5-VL processor resizing it into
its pixel budget, ``--max_pixels``, default 1280x28x28). The tiny random-weight Qwen2.5-VL's processor is
the real one; the engine does not run. Photo-like JPEGs (smooth gradients, noise, quality 90), the arms
alternating, new photos for each run (none answered from vLLM's processor cache). Prints one JSON:
milliseconds per photo for each part, their ratio, and the prompt token counts seen (all photos have one
size, so one count: the reduced decoding must not change it).
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

from vllm_chunks import started_tiny_serving  # noqa: E402


def photos(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[str]:
    """``count`` photo-like JPEGs: a smooth gradient of another colour each, with sensor-like noise (``seed``:
    other noise, so that no photo is answered from vLLM's processor cache that another run filled)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 1, width, dtype=np.float32), np.linspace(0, 1, height, dtype=np.float32))
    paths = []
    for i in range(count):
        base = np.stack([x * (80 + 10 * i), y * 200, (1 - x) * 150], axis=-1) + 30
        noisy = base + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def run_arm(serving: Any, paths: list[str], reduced: bool) -> dict[str, Any]:
    from dataflow_mm.serving.messages import build_conversation

    reduction = serving._jpeg_reduction
    if not reduced:
        serving._jpeg_reduction = None
    build, render, tokens = [], [], []
    try:
        for path in paths:
            (conversation,) = serving.prepare_conversations([build_conversation("Describe this photo.", [path])])
            started = time.perf_counter()
            request = serving._request(conversation)
            built = time.perf_counter()
            (engine_input,) = serving._llm.renderer.render_cmpl([request])
            build.append(built - started)
            render.append(time.perf_counter() - built)
            tokens.append(len(engine_input["prompt_token_ids"]))
    finally:
        serving._jpeg_reduction = reduction
    median_ms = {"build_ms": 1000 * statistics.median(build), "render_ms": 1000 * statistics.median(render)}
    return {**median_ms, "tokens": tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(4000, 3000))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_pixels", type=int, default=1280 * 28 * 28)
    parser.add_argument("--out", default=None, help="also write the JSON here (vLLM logs to stdout too)")
    args = parser.parse_args()

    serving = started_tiny_serving(8, vllm_max_pixels=args.max_pixels)
    runs: dict[str, list[dict[str, Any]]] = {"whole": [], "reduced": []}
    with tempfile.TemporaryDirectory(prefix="jpeg_reduction_") as tmp:
        size = tuple(args.size)
        run_arm(serving, photos(Path(tmp) / "warm", 2, size, seed=10**6), reduced=True)  # first-use costs
        for repeat in range(args.repeats):
            for number, arm in enumerate(runs):
                paths = photos(Path(tmp) / f"{arm}_{repeat}", args.photos, size, seed=1 + 10 * repeat + number)
                runs[arm].append(run_arm(serving, paths, reduced=arm == "reduced"))
                print(arm, {k: v for k, v in runs[arm][-1].items() if k != "tokens"}, file=sys.stderr, flush=True)
    reduced_to = serving._jpeg_reduction(tuple(args.size)) if serving._jpeg_reduction else None
    serving.cleanup()
    median = {
        arm: {part: round(statistics.median(r[part] for r in results), 2) for part in ("build_ms", "render_ms")}
        for arm, results in runs.items()
    }
    total = {arm: parts["build_ms"] + parts["render_ms"] for arm, parts in median.items()}
    result = {
        "photos": args.photos,
        "size": list(args.size),
        "max_pixels": args.max_pixels,
        "decoded_at": list(reduced_to) if reduced_to else None,
        "median_ms_per_photo": median,
        "whole / reduced (build + processing)": round(total["whole"] / total["reduced"], 2),
        "prompt_tokens": sorted({t for results in runs.values() for r in results for t in r["tokens"]}),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
