"""Img-Diff: the batched operators versus the same steps issued one box at a time (the original's pattern).

    .venv/bin/python benchmarks/imgdiff.py                 # 32 pairs x 4 boxes, tiny models, CPU
    .venv/bin/python benchmarks/imgdiff.py --json out.json

Both arms run the same five steps on the same synthetic pairs with the same loaded models (tiny
random-weight LLaVA-NeXT, BLIP ITM and CLIP built locally; loading and a warm-up call are
excluded from both timings), thresholds that keep every box so both do all the work, and greedy
decoding:

* batched: ``ImgDiffDifferenceCaptionGenerator`` on one chunk: one serving call for all region
  captions, one for all difference captions (the transformers backend batches ``--batch_size``
  requests per ``generate``), all crops through BLIP in batches, all caption pairs through CLIP
  in batches;
* per box: one VLM request per image per box, one ITM call per crop, one similarity call per
  pair, one VLM request per difference panel (Data-Juicer's loop, minus its temp files).

Model calls are forward/generate invocations: VLM ``generate`` calls + ITM forwards + text
encoder forwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from dataflow_mm.imaging.crop import crop_box
from dataflow_mm.imaging.loading import load_image
from dataflow_mm.models.tiny import tiny_model_path
from dataflow_mm.operators.imgdiff.box_decisions import candidate_decisions
from dataflow_mm.operators.imgdiff.fused_generator import ImgDiffDifferenceCaptionGenerator
from dataflow_mm.operators.imgdiff.step1_region_captioner import (
    DEFAULT_REGION_PROMPT,
    normalized_box_text,
)
from dataflow_mm.operators.imgdiff.step5_difference_captioner import (
    DEFAULT_DIFFERENCE_PROMPT,
    difference_panel,
)
from dataflow_mm.scoring import BlipITMScorer, text_similarity_model
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.serving.messages import build_conversation
from tests.support.imgdiff_pairs import write_imgdiff_table


class Counted:
    """Counts a serving's ``generate`` calls (the transformers backend's model invocations)."""

    def __init__(self, serving: LocalModelVLMServing_hf) -> None:
        self.serving = serving
        self.generate_calls = 0
        original = serving._generate

        def counted(chunk: Any, sampling: Any) -> Any:
            self.generate_calls += 1
            return original(chunk, sampling)

        serving._generate = counted  # type: ignore[method-assign]


PHASES = ("region_captions", "crop_itm", "caption_similarity", "difference_captions")


class PhaseTimes:
    """Seconds spent per step, summed."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._phase = ""
        self._started = 0.0

    def __call__(self, phase: str) -> PhaseTimes:
        self._phase = phase
        return self

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *_: Any) -> None:
        self.seconds[self._phase] += time.perf_counter() - self._started

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.seconds.items()}


def per_box(
    frame: pd.DataFrame, serving: Any, itm: BlipITMScorer, similarity: Any, timer: PhaseTimes
) -> list[dict[str, Any]]:
    """The original's loop: every model call handles one item."""
    results = []
    for row in frame.to_dict(orient="records"):
        with timer("region_captions"):
            image1 = load_image(row["image_path1"])
            image2 = load_image(row["image_path2"]).resize(image1.size)
        for decision in candidate_decisions(row["bboxes"], "cxcywh", False, image1.size):
            xyxy = decision["bbox_xyxy"]
            with timer("region_captions"):
                prompt = DEFAULT_REGION_PROMPT.format(bbox=normalized_box_text(xyxy, image1.size))
                caption1 = serving.chat([build_conversation(prompt, [image1])])[0].text
                caption2 = serving.chat([build_conversation(prompt, [image2])])[0].text
            with timer("crop_itm"):
                score1 = itm.score([crop_box(image1, xyxy)], [caption1])[0]
                score2 = itm.score([crop_box(image2, xyxy)], [caption2])[0]
            with timer("caption_similarity"):
                sim = similarity.similarity([caption1], [caption2])[0]
            with timer("difference_captions"):
                panel = difference_panel(image1, image2, xyxy)
                text = DEFAULT_DIFFERENCE_PROMPT.format(caption1=caption1, caption2=caption2)
                difference = serving.chat([build_conversation(text, [panel])])[0].text
            results.append({"c1": caption1, "c2": caption2, "itm": (score1, score2), "sim": sim, "diff": difference})
    return results


def time_steps(operator: ImgDiffDifferenceCaptionGenerator, timer: PhaseTimes) -> None:
    """Make each step of the fused operator add its time to ``timer``."""
    for step, phase in zip(operator.steps, PHASES, strict=True):
        original = step.process_chunk

        def timed(frame: pd.DataFrame, _original: Any = original, _phase: str = phase, **keys: Any) -> pd.DataFrame:
            with timer(_phase):
                return _original(frame, **keys)

        step.process_chunk = timed  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--boxes", type=int, default=4)
    parser.add_argument("--vlm", default="llava_next", choices=["llava_next", "qwen2_5_vl"])
    parser.add_argument("--max_tokens", type=int, default=32, help="new tokens per answer (a short caption)")
    parser.add_argument("--batch_size", type=int, default=32, help="requests per generate call (batched arm)")
    parser.add_argument("--scoring_batch_size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each arm (alternating); medians reported")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    threads = torch.get_num_threads()
    vlm_dir = tiny_model_path(args.vlm)
    blip_dir, clip_dir = tiny_model_path("blip_itm"), tiny_model_path("clip")
    serving = LocalModelVLMServing_hf(
        str(vlm_dir), batch_size=args.batch_size, temperature=0.0, max_tokens=args.max_tokens, device="cpu"
    )
    itm = BlipITMScorer(blip_dir, device="cpu", batch_size=args.scoring_batch_size)
    similarity = text_similarity_model(clip_dir, device="cpu", batch_size=args.scoring_batch_size)
    counter = Counted(serving)
    operator = ImgDiffDifferenceCaptionGenerator(
        image_text_matching_filter_args={"min_score": 0.0, "max_score": 1.0},
        text_pair_similarity_filter_args={"min_score": -1.0, "max_score": 1.0},
        serving=serving,
        itm_scorer=itm,
        text_similarity=similarity,
        device="cpu",
        max_box_area_ratio=0.1,
    )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="imgdiff_bench_") as folder:
        table = write_imgdiff_table(Path(folder), args.pairs, args.boxes)
        frame = pd.read_json(table, lines=True)
        # Load every model and warm it up once, outside both timings.
        per_box(frame.head(1), serving, itm, similarity, PhaseTimes())
        operator.process_chunk(frame.head(2))
        batched_phases, per_box_phases = PhaseTimes(), PhaseTimes()
        time_steps(operator, batched_phases)

        def snapshot() -> dict[str, int]:
            return {
                "vlm_chat_calls": serving.stats.calls,
                "vlm_requests": serving.stats.requests,
                "vlm_generate_calls": counter.generate_calls,
                "itm_calls": itm.stats.calls,
                "similarity_calls": similarity.stats.calls,
            }

        def delta(before: dict[str, int]) -> dict[str, int]:
            after = snapshot()
            out = {key: after[key] - before[key] for key in after}
            out["model_calls"] = out["vlm_generate_calls"] + out["itm_calls"] + out["similarity_calls"]
            return out

        batched_runs: list[float] = []
        per_box_runs: list[float] = []
        batched_phase_runs: list[dict[str, float]] = []
        per_box_phase_runs: list[dict[str, float]] = []
        for _ in range(args.repeat):  # the arms alternate, so a busy moment hits both alike
            batched_phases.seconds = dict.fromkeys(PHASES, 0.0)
            before = snapshot()
            started = time.perf_counter()
            out = operator.process_chunk(frame)
            batched_runs.append(time.perf_counter() - started)
            batched = delta(before)
            batched_phase_runs.append(batched_phases.rounded())
            kept_batched = sum(len(v) for v in out["bbox_difference_captions"])

            per_box_phases.seconds = dict.fromkeys(PHASES, 0.0)
            before = snapshot()
            started = time.perf_counter()
            single = per_box(frame, serving, itm, similarity, per_box_phases)
            per_box_runs.append(time.perf_counter() - started)
            unbatched = delta(before)
            per_box_phase_runs.append(per_box_phases.rounded())
    batched_seconds, per_box_seconds = statistics.median(batched_runs), statistics.median(per_box_runs)
    median_run = sorted(range(args.repeat), key=lambda i: batched_runs[i])[args.repeat // 2]
    median_box_run = sorted(range(args.repeat), key=lambda i: per_box_runs[i])[args.repeat // 2]

    result = {
        "pairs": args.pairs,
        "boxes_per_pair": args.boxes,
        "vlm": args.vlm,
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "scoring_batch_size": args.scoring_batch_size,
        "repeat": args.repeat,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "batched": {
            "seconds": round(batched_seconds, 2),
            "boxes_kept": kept_batched,
            **batched,
            "runs": [round(v, 2) for v in batched_runs],
            "step_seconds": batched_phase_runs[median_run],
        },
        "per_box": {
            "seconds": round(per_box_seconds, 2),
            "boxes_kept": len(single),
            **unbatched,
            "runs": [round(v, 2) for v in per_box_runs],
            "step_seconds": per_box_phase_runs[median_box_run],
        },
        "speedup": round(per_box_seconds / batched_seconds, 2),
        "call_reduction": round(unbatched["model_calls"] / max(1, batched["model_calls"]), 1),
    }
    print(f"Img-Diff benchmark: {args.pairs} pairs x {args.boxes} boxes, tiny {args.vlm} + BLIP ITM + CLIP, CPU")
    print(f"median of {args.repeat} alternating runs per arm")
    print(f"{'arm':<10}{'seconds':>9}{'model calls':>13}{'generate':>10}{'ITM':>6}{'sim':>6}{'VLM chat':>10}")
    for name in ("batched", "per_box"):
        r = result[name]
        print(
            f"{name:<10}{r['seconds']:>9.2f}{r['model_calls']:>13}{r['vlm_generate_calls']:>10}"
            f"{r['itm_calls']:>6}{r['similarity_calls']:>6}{r['vlm_chat_calls']:>10}"
        )
    print(f"speedup {result['speedup']}x, {result['call_reduction']}x fewer model calls")
    print("seconds per step in the median run (batched / per box):")
    for phase in PHASES:
        b, u = result["batched"]["step_seconds"][phase], result["per_box"]["step_seconds"][phase]
        print(f"  {phase:<22}{b:>8.2f} /{u:>8.2f}  ({u / b if b else float('inf'):.1f}x)")
    print(f"(torch threads {threads}, {os.cpu_count()} CPUs, 1-min load average {result['load_average_1min']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
