"""One-shot offline check of the vLLM path on a machine (a GPU, or vLLM's CPU build), writing one JSON.

    python benchmarks/gpu_smoke.py --out smoke.json [--model /models/Qwen2.5-VL-7B-Instruct]
        [--stages 1,2,3] [--blip_model DIR] [--clip_model DIR] [--detector_model DIR]

Nothing is downloaded; it runs in minutes. Exit 0 when every stage that ran passed, 1 otherwise.

* **Stage 1, plumbing** (always; runs on vLLM's CPU build in the tests): a tiny random-weight
  Qwen2.5-VL built here with head sizes GPU attention kernels take (64), served by
  ``LocalModelVLMServing_vllm``: 16 requests with distinct images, each rendered by vLLM's renderer on the
  window's render thread, added one by one and answered through ``llm_engine.step`` (the window counts
  them), JSON answers under the region pipeline's schema all parse, a row
  whose image is missing and a row too long for the context fail alone (never enqueued), and after
  ``cleanup()`` the engine's processes are gone and, on a GPU, its memory is back.
* **Stage 2, a real model** (``--model DIR``, a local folder): the engine reports the default context
  (8192), a 4000x3000 photo's prompt tokens as vLLM counts them equal the project's counter, and 256
  distinct images are answered at a window of 64 and at the default window (the engine's
  ``max_num_seqs``), the latter with and without the render thread: requests/s, generated tokens/s,
  the seconds of input processing on the render thread and on the driver, and the CPU seconds of the
  pipeline's process per wall second (``pipeline_cpu_share``: near 1, or above with the render thread,
  the engine waits on that one Python process), of each.
* **Stage 3, the memory plan** (a GPU and local scorer folders): each scorer (BLIP, CLIP, OWLv2) runs one
  batch of 32 on the GPU; its peak reserved memory is compared with the plan's reserve
  (``pipeline.gpu_plan.ModelLoad``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu_time import process_cpu_seconds  # noqa: E402

JSON_MAX_TOKENS = 96  # the region answers' schema bounds each caption so that the JSON closes within it
PLUMBING_ROWS = 16
THROUGHPUT_ROWS = 256


def has_cuda() -> bool:
    import shutil
    import subprocess

    tool = shutil.which("nvidia-smi")
    if tool is None:
        return False
    done = subprocess.run([tool, "-L"], capture_output=True, text=True)
    return done.returncode == 0 and "GPU" in done.stdout


def gpu_used_mib() -> int | None:
    import shutil
    import subprocess

    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    done = subprocess.run(
        [tool, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"], capture_output=True, text=True
    )
    return int(done.stdout.split()[0]) if done.returncode == 0 else None


def engine_processes() -> list[str]:
    """This process's live descendants (vLLM's engine core, workers), but multiprocessing's tracker."""
    import psutil

    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in command:
                alive.append(f"{child.pid}: {command[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def distinct_images(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    """``count`` images of random pixels (no two alike: no prefix or image cache hit between them)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    paths = []
    for index in range(count):
        path = folder / f"image_{index:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def serving_for(model: Path, cuda: bool, **extra: Any) -> Any:
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

    return LocalModelVLMServing_vllm(
        str(model),
        vllm_dtype="bfloat16" if cuda else "float32",
        vllm_enforce_eager=True,
        vllm_temperature=0.0,
        **extra,
    )


def stage_plumbing(work: Path, cuda: bool) -> dict[str, Any]:
    from dataflow_mm.models.tiny_builders import build_tiny_qwen2_5_vl
    from dataflow_mm.operators.region_caption.caption_parser import RegionAnswerSchema
    from dataflow_mm.serving.base import SamplingParams
    from dataflow_mm.serving.messages import build_conversation

    model = build_tiny_qwen2_5_vl(work / "tiny_qwen2_5_vl_head64", head_dim=64)
    images = distinct_images(work / "plumbing", PLUMBING_ROWS, (96, 72))
    used_before = gpu_used_mib()
    # With the render thread (an option, off by default), so that this path is checked on the CPU build too.
    serving = serving_for(model, cuda, vllm_max_model_len=2048, vllm_max_tokens=8, vllm_render_thread=True)
    started = time.perf_counter()
    serving.start()
    start_s = time.perf_counter() - started
    conversations = [build_conversation(f"What is in picture {i}?", [path]) for i, path in enumerate(images)]
    conversations.append(build_conversation("And this one?", [str(work / "no_such_image.jpg")]))
    conversations.append(build_conversation("word " * 5000))  # past the 2048-token context
    started = time.perf_counter()
    answers = serving.chat(conversations)
    chat_s = time.perf_counter() - started
    window = serving.window_report()
    schema = RegionAnswerSchema(max_tokens=JSON_MAX_TOKENS, max_boxes=2).for_row({"valid_bboxes_num": 2})
    structured = SamplingParams(temperature=0.0, max_tokens=JSON_MAX_TOKENS, response_schema=schema)
    json_answers = serving.chat(conversations[:4], structured)
    parsed = []
    for completion in json_answers:
        try:
            parsed.append(isinstance(json.loads(completion.text or ""), dict))
        except ValueError:
            parsed.append(False)
    serving.cleanup()
    time.sleep(2)
    left = engine_processes()
    used_after = gpu_used_mib()
    errors = [a.error for a in answers]
    checks = {
        "answered": all(a.ok and a.completion_tokens for a in answers[:PLUMBING_ROWS]),
        "enqueued_one_by_one": window.get("enqueued") == PLUMBING_ROWS,
        "input_processing_off_the_driver": window.get("render_s", 0) > 0,  # vLLM's renderer, on its own thread
        "missing_image_fails_alone": (errors[PLUMBING_ROWS] or "").startswith(("ImageNotFoundError", "ImageLoadError")),
        "too_long_fails_alone": (errors[PLUMBING_ROWS + 1] or "").startswith("PromptTooLongError"),
        "json_answers_parse": all(parsed),
        "engine_processes_gone": not left,
        "gpu_memory_returned": used_before is None or used_after is None or used_after <= used_before + 512,
    }
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "engine_start_s": round(start_s, 2),
        "chat_s": round(chat_s, 2),
        "window": window,
        "errors": errors[PLUMBING_ROWS:],
        "gpu_used_mib": {"before": used_before, "after_cleanup": used_after},
        "processes_left": left,
    }


def stage_model(work: Path, model: Path, cuda: bool) -> dict[str, Any]:
    from dataflow_mm.serving.messages import build_conversation
    from dataflow_mm.serving.token_budget import PromptTokenCounter
    from dataflow_mm.serving.vllm_engine import engine_max_model_len

    images = distinct_images(work / "throughput", THROUGHPUT_ROWS, (640, 480))
    large = distinct_images(work / "large", 1, (4000, 3000))[0]
    result: dict[str, Any] = {"model": str(model), "runs": {}}
    arms = (("window_64", 64, False), ("default_window", None, False), ("default_window_render_thread", None, True))
    for label, window, render_thread in arms:
        serving = serving_for(
            model, cuda, vllm_max_tokens=64, vllm_max_requests_in_flight=window, vllm_render_thread=render_thread
        )
        serving.start()
        if label == "window_64":
            result["max_model_len"] = engine_max_model_len(serving._llm)
            conversation = build_conversation("Describe this photo.", [large])
            (answer,) = serving.chat([conversation])
            counter = PromptTokenCounter(serving._processor, serving.mm_processor_kwargs())
            from dataflow_mm.serving.messages import split_images, to_pil

            template, sources = split_images(serving.prepare_conversations([conversation])[0])
            counted = counter.exact(counter.render(template), [to_pil(s) for s in sources])
            result["large_image_tokens"] = {"vllm": answer.prompt_tokens, "counter": counted}
        conversations = [build_conversation(f"Describe photo {i}.", [p]) for i, p in enumerate(images)]
        started, cpu = time.perf_counter(), process_cpu_seconds()
        answers = serving.chat(conversations)
        seconds, cpu = time.perf_counter() - started, process_cpu_seconds() - cpu
        tokens = sum(a.completion_tokens or 0 for a in answers)
        report = serving.window_report()
        result["runs"][label] = {
            "window": report.get("max_requests"),
            "render_s": report.get("render_s"),
            "enqueue_s": report.get("enqueue_s"),
            "seconds": round(seconds, 2),
            "requests_per_s": round(len(answers) / seconds, 2),
            "pipeline_cpu_share": round(cpu / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "failed": sum(1 for a in answers if not a.ok),
        }
        serving.cleanup()
    runs = result["runs"]
    tokens = result.get("large_image_tokens", {})
    result["passed"] = (
        result.get("max_model_len") == 8192
        and tokens.get("vllm") == tokens.get("counter")
        and all(run["failed"] == 0 for run in runs.values())
    )
    return result


def stage_memory_plan(models: dict[str, str | None]) -> dict[str, Any]:
    import torch
    from PIL import Image

    from dataflow_mm.pipeline.gpu_plan import GIB, ModelLoad
    from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
    from dataflow_mm.scoring.image_text_matching import BlipITMScorer
    from dataflow_mm.scoring.object_detection import OwlDetector

    image = Image.new("RGB", (1024, 768), (120, 90, 60))
    batch = 32
    calls = {
        "blip": (BlipITMScorer, lambda s: s.score([image] * batch, ["a photo"] * batch)),
        "clip": (ClipImageSimilarity, lambda s: s.similarity([image] * batch, [image] * batch)),
        "detector": (OwlDetector, lambda s: s.detect([image] * batch, [["a car"]] * batch)),
    }
    result: dict[str, Any] = {}
    for name, folder in models.items():
        if not folder:
            result[name] = {"skipped": "no local folder given"}
            continue
        scorer_class, run = calls[name]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_reserved()
        scorer = scorer_class(folder, device="cuda", batch_size=batch)
        run(scorer)
        peak = torch.cuda.max_memory_reserved() - base
        scorer.cleanup()
        planned = ModelLoad(folder, batch).reserve_bytes()
        result[name] = {
            "peak_reserved_gib": round(peak / GIB, 3),
            "planned_gib": round(planned / GIB, 3),
            "within_plan": peak <= planned,
        }
    ran = [r for r in result.values() if "within_plan" in r]
    result["passed"] = all(r["within_plan"] for r in ran)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON of results")
    parser.add_argument("--stages", default="1,2,3")
    parser.add_argument("--model", default=None, help="a local model folder for stage 2")
    parser.add_argument("--blip_model", default=None)
    parser.add_argument("--clip_model", default=None)
    parser.add_argument("--detector_model", default=None)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    stages = {s.strip() for s in args.stages.split(",")}
    cuda = has_cuda()
    results: dict[str, Any] = {"cuda": cuda, "stages": {}}
    try:
        import vllm

        results["vllm"] = vllm.__version__
    except ImportError as exc:
        results["vllm"] = f"not importable: {exc}"
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        work = Path(args.work or tmp)
        if "1" in stages:
            results["stages"]["1_plumbing"] = stage_plumbing(work, cuda)
        if "2" in stages:
            if args.model:
                results["stages"]["2_model"] = stage_model(work, Path(args.model), cuda)
            else:
                results["stages"]["2_model"] = {"skipped": "no --model folder given"}
        if "3" in stages:
            if cuda:
                models = {"blip": args.blip_model, "clip": args.clip_model, "detector": args.detector_model}
                results["stages"]["3_memory_plan"] = stage_memory_plan(models)
            else:
                results["stages"]["3_memory_plan"] = {"skipped": "no GPU"}
    ran = [s for s in results["stages"].values() if "passed" in s]
    results["passed"] = bool(ran) and all(s["passed"] for s in ran)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1))
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
