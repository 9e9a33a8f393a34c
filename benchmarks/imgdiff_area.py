"""Img-Diff difference areas: the batched generator versus Data-Juicer's one-candidate-at-a-time pattern.

    .venv/bin/python benchmarks/imgdiff_area.py                 # 32 captioned pairs, tiny models, CPU
    .venv/bin/python benchmarks/imgdiff_area.py --json out.json

Both arms run the same six steps on the same synthetic captioned pairs with the same loaded models
(tiny random-weight CLIP, OWLv2 and BLIP ITM built locally; loading and a warm-up are excluded)
and thresholds that keep every candidate, so both do all the work:

* batched: ``ImgDiffDifferenceAreaGenerator`` on one chunk: one CLIP call for all pairs, one
  detector call for all images, one ITM call for all (crop, noun) items, one CLIP call for all
  crop pairs (each cut into forward passes of ``--batch_size``); crops stay in memory;
* per candidate (Data-Juicer's ``imgdiff_difference_area_generator_mapper`` loop): per pair one
  CLIP call and one detector call per image; per candidate both crops written to temp JPEG files
  and read back, one ITM call per crop and noun, one CLIP call per crop pair.

Model calls are forward passes (CLIP image encoder + detector + BLIP ITM).
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from dataflow_mm.imaging.crop import crop_box
from dataflow_mm.imaging.loading import load_image
from dataflow_mm.imaging.nms import kept_indices
from dataflow_mm.models.tiny import tiny_model_path
from dataflow_mm.operators.imgdiff.area_generator import ImgDiffDifferenceAreaGenerator
from dataflow_mm.operators.imgdiff.changed_nouns import changed_nouns
from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from dataflow_mm.scoring.object_detection import OwlDetector
from tests.support.imgdiff_pairs import write_captioned_pairs

KEEP_ALL = ({"min_score_1": -1.0, "min_score_2": -1.0}, {"conf": 0.0}, {"min_score": 0.0})


def per_candidate(
    frame: pd.DataFrame, clip: ClipImageSimilarity, detector: OwlDetector, itm: BlipITMScorer, crops_dir: Path
) -> int:
    """Data-Juicer's loop: every model call handles one pair, one image, one crop-noun item or one crop pair."""
    found_boxes = 0
    for number, row in enumerate(frame.to_dict(orient="records")):
        image1 = load_image(row["image_path1"])
        image2 = load_image(row["image_path2"]).resize(image1.size, Image.Resampling.BICUBIC)
        if not -1.0 <= clip.similarity([image1], [image2])[0] <= 1.0:
            continue
        nouns1, nouns2 = changed_nouns(row["caption1"], row["caption2"])
        detections = [*detector.detect([image1], [nouns1])[0], *detector.detect([image2], [nouns2])[0]]
        kept = []
        for index, detection in enumerate(detections):
            paths = []
            for which, image in ((1, image1), (2, image2)):
                path = crops_dir / f"crop_{number}_{which}_<{index}>.jpg"
                crop_box(image, detection.box).save(path)
                paths.append(path)
            crop1, crop2 = (load_image(path) for path in paths)
            match1 = any(0.0 <= itm.score([crop1], [noun])[0] <= 1.0 for noun in nouns1)
            match2 = any(0.0 <= itm.score([crop2], [noun])[0] <= 1.0 for noun in nouns2)
            if match1 and match2:
                similarity = clip.similarity([crop1], [crop2])[0]
                if -1.0 <= similarity <= 1.0:
                    kept.append((detection.box, -similarity))
            for path in paths:
                path.unlink()
        found_boxes += len(kept_indices([b for b, _ in kept], [s for _, s in kept], 0.5))
    return found_boxes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32, help="items per forward pass (batched arm)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each arm (alternating); medians reported")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    clip = ClipImageSimilarity(tiny_model_path("clip"), device="cpu", batch_size=args.batch_size)
    detector = OwlDetector(tiny_model_path("owlv2"), device="cpu", batch_size=args.batch_size, threshold=0.0)
    itm = BlipITMScorer(tiny_model_path("blip_itm"), device="cpu", batch_size=args.batch_size)
    generator = ImgDiffDifferenceAreaGenerator(*KEEP_ALL, image_similarity=clip, detector=detector, itm_scorer=itm)
    models = (clip, detector, itm)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="imgdiff_area_bench_") as folder:
        frame = pd.read_json(write_captioned_pairs(Path(folder) / "pairs", args.pairs), lines=True)
        crops_dir = Path(folder) / "crops"
        crops_dir.mkdir()
        per_candidate(frame.head(1), clip, detector, itm, crops_dir)  # load and warm up, outside the timings
        generator.process_chunk(frame.head(2))

        def calls() -> dict[str, int]:
            return {"clip": clip.stats.calls, "detector": detector.stats.calls, "itm": itm.stats.calls}

        runs: dict[str, list[float]] = {"batched": [], "per_candidate": []}
        counts: dict[str, dict[str, int]] = {}
        boxes: dict[str, int] = {}
        for _ in range(args.repeat):  # the arms alternate, so a busy moment hits both alike
            for arm in ("batched", "per_candidate"):
                before, started = calls(), time.perf_counter()
                if arm == "batched":
                    out = generator.process_chunk(frame)
                    boxes[arm] = sum(len(b) for b, r in zip(out["bboxes"], out["area_reason"], strict=True) if not r)
                else:
                    boxes[arm] = per_candidate(frame, clip, detector, itm, crops_dir)
                runs[arm].append(time.perf_counter() - started)
                after = calls()
                counts[arm] = {key: after[key] - before[key] for key in after}
                counts[arm]["model_calls"] = sum(after[key] - before[key] for key in after)
        candidates = sum(len(d) for d in out["area_decisions"])
    seconds = {arm: round(statistics.median(values), 3) for arm, values in runs.items()}
    result = {
        "pairs": args.pairs,
        "candidates": candidates,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "seconds_median": seconds,
        "seconds_runs": {arm: [round(v, 3) for v in values] for arm, values in runs.items()},
        "model_calls": counts,
        "boxes_found": boxes,
        "speedup": round(seconds["per_candidate"] / seconds["batched"], 2),
        "fewer_calls": round(counts["per_candidate"]["model_calls"] / counts["batched"]["model_calls"], 1),
        "model_loads": {type(m).__name__: m.stats.loads for m in models},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
