"""Img-Diff's model-based difference-area generator: batched model calls, decisions, Data-Juicer format, resume.

Model tests run the real loading and batching code on tiny random-weight CLIP, OWLv2 and BLIP
models (their scores mean nothing: only structure and call patterns are asserted). The
algorithm's own parts are checked with stand-in models whose scores follow the pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dataflow_mm.imaging.bbox import iou, to_xyxy
from dataflow_mm.operators.imgdiff.area_generator import (
    AREA_DECISIONS_KEY,
    AREA_REASON_KEY,
    STEP_CROP_SIMILARITY,
    STEP_ITM,
    STEP_NMS,
    ImgDiffDifferenceAreaGenerator,
    choose_proposer,
)
from dataflow_mm.operators.interop.dj_meta import DJ_BBOX_KEY, DJ_META_KEY
from dataflow_mm.pipeline.base import PipelineABC
from dataflow_mm.scoring._common import ScorerStats
from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from dataflow_mm.scoring.object_detection import Detection, OwlDetector
from dataflow_mm.storage.file_storage import FileStorage
from tests.support.imgdiff_pairs import edited_pair, write_captioned_pairs

pytestmark = pytest.mark.slow

EVERYTHING = {  # thresholds that keep every candidate, so every model sees every item
    "pair": {"min_score_1": -1.0, "min_score_2": -1.0},
    "segment": {"conf": 0.0},
    "itm": {"min_score": 0.0},
}


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_generator(clip: Path, owl: Path, blip: Path, batch_size: int = 256, **kwargs: Any) -> Any:
    args = {**EVERYTHING, **kwargs.pop("args", {})}
    return ImgDiffDifferenceAreaGenerator(
        args["pair"],
        args["segment"],
        args["itm"],
        image_similarity=ClipImageSimilarity(clip, device="cpu", batch_size=batch_size),
        detector=OwlDetector(owl, device="cpu", batch_size=batch_size, threshold=args["segment"]["conf"]),
        itm_scorer=BlipITMScorer(blip, device="cpu", batch_size=batch_size),
        **kwargs,
    )


class OneStep(PipelineABC):
    def __init__(self, operator: Any, table: Path, cache: Path, chunk_size: int = 3) -> None:
        self.operator = operator
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="area", chunk_size=chunk_size)

    def forward(self) -> None:
        self.operator.run(storage=self.storage.step())


@pytest.fixture(scope="module")
def tiny(tiny_clip_dir: Path, tiny_owlv2_dir: Path, tiny_blip_dir: Path) -> tuple[Path, Path, Path]:
    return tiny_clip_dir, tiny_owlv2_dir, tiny_blip_dir


# ---------------------------------------------------------------- tiny real models


def test_one_batched_call_per_model_per_chunk(tmp_path: Path, tiny: tuple[Path, Path, Path]) -> None:
    table = write_captioned_pairs(tmp_path / "pairs", 6)
    generator = tiny_generator(*tiny)
    summary = OneStep(generator, table, tmp_path / "cache", chunk_size=3).run()
    assert summary.rows_out == 6 and summary.rows_with_error == 0
    rows = read_rows(tmp_path / "cache" / "area_step1.jsonl")
    candidates = sum(len(r[AREA_DECISIONS_KEY]) for r in rows)
    nouns = sum(len(r["changed_nouns"]["caption1"]) + len(r["changed_nouns"]["caption2"]) for r in rows)
    assert candidates >= 6 * 4 and nouns == 12  # many boxes and nouns ...
    # ... and per chunk of 3 rows: one detector call, one ITM call, two CLIP calls (whole pairs, crop pairs).
    assert generator.detector.stats.calls == 2 and generator.itm_scorer.stats.calls == 2
    assert generator.image_similarity.stats.calls == 4
    assert generator.itm_scorer.stats.items == 2 * candidates  # every crop against its one changed noun
    assert [m.stats.loads for m in (generator.detector, generator.itm_scorer, generator.image_similarity)] == [1] * 3
    for row in rows:
        assert row["bbox_source"] == "generated" and row[AREA_REASON_KEY] is None
        assert -1.0 <= row["image_pair_similarity"] <= 1.0
        kept = [d for d in row[AREA_DECISIONS_KEY] if d["kept"]]
        assert row["bboxes"] == [d["bbox"] for d in sorted(kept, key=lambda d: (d["crop_similarity"], d["index"]))]
        for d in row[AREA_DECISIONS_KEY]:
            assert d["source_image"] in (1, 2) and len(d["bbox"]) == 4 and len(d["bbox_xyxy"]) == 4
            assert d["label"] in row["changed_nouns"][f"caption{d['source_image']}"]
            assert 0.0 <= d["itm_score1"] <= 1.0 and 0.0 <= d["itm_score2"] <= 1.0
            assert d["kept"] or d["dropped_at"] == STEP_NMS  # thresholds keep all; only overlaps go
    generator.cleanup()


def test_pairs_outside_the_similarity_range_get_no_difference_without_detection(
    tmp_path: Path, tiny: tuple[Path, Path, Path]
) -> None:
    table = write_captioned_pairs(tmp_path / "pairs", 3)
    frame = pd.read_json(table, lines=True)
    frame.loc[2, "caption2"] = frame.loc[2, "caption1"]  # same caption: no changed noun
    generator = tiny_generator(*tiny, args={"pair": {"min_score_1": -1.0, "max_score_1": 1.0, "min_score_2": -1.0}})
    out = generator.process_chunk(frame)
    assert out["bboxes"][2] == [[0, 0, 0, 0]] and "no changed noun" in out[AREA_REASON_KEY][2]
    assert generator.detector.stats.items == 4  # rows 0 and 1 only, both images
    strict = tiny_generator(*tiny, args={"pair": {"min_score_1": -1.0, "max_score_1": -0.5}})
    out = strict.process_chunk(frame)
    assert out["bboxes"].tolist() == [[[0, 0, 0, 0]]] * 3
    assert out[AREA_DECISIONS_KEY].tolist() == [[]] * 3
    assert all(reason.startswith("image pair similarity") for reason in out[AREA_REASON_KEY])
    assert strict.detector.stats.calls == 0 and strict.itm_scorer.stats.calls == 0  # nothing else ran


def test_data_juicer_format_in_and_out(tmp_path: Path, tiny: tuple[Path, Path, Path]) -> None:
    table = write_captioned_pairs(tmp_path / "pairs", 3, dj_meta=True)
    rows = read_rows(table)
    rows[1][DJ_META_KEY] = {DJ_BBOX_KEY: [[40, 30, 20, 20]], "other": 1}  # a row that already has boxes
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    generator = tiny_generator(*tiny, bbox_format="xyxy")
    OneStep(generator, table, tmp_path / "cache").run()
    out = read_rows(tmp_path / "cache" / "area_step1.jsonl")
    assert [r["bbox_source"] for r in out] == ["generated", "input", "generated"]
    assert out[1][DJ_META_KEY] == {DJ_BBOX_KEY: [[40, 30, 20, 20]], "other": 1}  # untouched
    for row in (out[0], out[2]):
        kept = sorted(
            (d for d in row[AREA_DECISIONS_KEY] if d["kept"]), key=lambda d: (d["crop_similarity"], d["index"])
        )
        assert row[DJ_META_KEY][DJ_BBOX_KEY] == [d["bbox_dj"] for d in kept]  # Data-Juicer's pixel cx, cy, w, h
        for d in kept:
            cx, cy, w, h = d["bbox_dj"]
            assert d["bbox"] == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], abs=0.11)


def test_rerun_skips_the_step_without_loading_a_model(tmp_path: Path, tiny: tuple[Path, Path, Path]) -> None:
    table = write_captioned_pairs(tmp_path / "pairs", 4)
    OneStep(tiny_generator(*tiny), table, tmp_path / "cache").run()
    first = (tmp_path / "cache" / "area_step1.jsonl").read_bytes()
    again = tiny_generator(*tiny)
    summary = OneStep(again, table, tmp_path / "cache").run()
    assert summary.steps[0].skipped
    assert again.detector.stats.loads == again.itm_scorer.stats.loads == again.image_similarity.stats.loads == 0
    assert (tmp_path / "cache" / "area_step1.jsonl").read_bytes() == first


def test_bad_rows_get_an_error_and_the_rest_go_on(tmp_path: Path, tiny: tuple[Path, Path, Path]) -> None:
    frame = pd.read_json(write_captioned_pairs(tmp_path / "pairs", 3), lines=True)
    frame.loc[0, "image_path2"] = str(tmp_path / "missing.png")
    frame.loc[1, "caption1"] = None
    out = tiny_generator(*tiny).process_chunk(frame)
    assert out["error"][0].startswith("ImageNotFoundError") and out["error"][1].startswith("MissingFieldError")
    assert pd.isna(out["error"][2]) and out["bbox_source"][2] == "generated"


def test_unknown_argument_keys_and_fastsam_checkpoints_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        ImgDiffDifferenceAreaGenerator(image_segment_mapper_args={"confidence": 0.1})
    with pytest.raises(Exception, match="FastSAM"):
        ImgDiffDifferenceAreaGenerator(image_segment_mapper_args={"model_path": "FastSAM-x.pt"})


def test_auto_proposer_follows_the_caption_columns(tmp_path: Path) -> None:
    captioned = write_captioned_pairs(tmp_path / "a", 1)
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"image_path1": "a.png", "image_path2": "b.png"}) + "\n")
    keys = ("caption1", "caption2")
    assert choose_proposer("auto", FileStorage(str(captioned), cache_path=str(tmp_path / "c")), keys) == "model"
    assert choose_proposer("auto", FileStorage(str(plain), cache_path=str(tmp_path / "c")), keys) == "pixel"
    assert choose_proposer("pixel", FileStorage(str(captioned), cache_path=str(tmp_path / "c")), keys) == "pixel"


# ---------------------------------------------------------------- the algorithm, with stand-in models


class Stub:
    """What the generator needs of a model besides its one method."""

    def __init__(self) -> None:
        self.stats = ScorerStats()
        self.is_smoke_test_model = False

    def describe(self) -> dict[str, Any]:
        return {"stub": type(self).__name__}

    def load(self) -> None:
        pass

    def cleanup(self) -> None:
        pass


class PixelSimilarity(Stub):
    """1 for pixel-identical pairs, down to 0.2 the more pixels differ (a CLIP stand-in on CLIP's scale)."""

    def similarity(self, images_a: list[Image.Image], images_b: list[Image.Image]) -> list[float]:
        self.stats.calls += 1
        out = []
        for a, b in zip(images_a, images_b, strict=True):
            changed = np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).max(axis=2) > 30
            out.append(1.0 - 0.8 * float(changed.mean()))
        return out


class ObjectDetector(Stub):
    """Proposes the scene's object boxes (both images) plus one box around two objects (a distractor)."""

    def __init__(self, boxes: dict[tuple[int, int], list[tuple[float, float, float, float]]]) -> None:
        super().__init__()
        self.boxes = boxes  # keyed by image size and index within the call

    def detect(self, images: list[Image.Image], queries: list[list[str]]) -> list[list[Detection]]:
        self.stats.calls += 1
        return [[Detection(box, 0.9, q[0]) for box in self.boxes[i // 2]] for i, q in enumerate(queries)]


class AlwaysMatches(Stub):
    def score(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        self.stats.calls += 1
        return [0.9] * len(images)


@pytest.mark.parametrize("edit", ["recolour", "remove", "add"])
def test_the_changed_object_is_the_box_returned(tmp_path: Path, edit: str) -> None:
    rows, truths, candidates = [], [], {}
    for seed in range(4):
        first, second, boxes, truth = edited_pair((320, 240), 4, seed=seed, edit=edit)
        first.save(tmp_path / f"{seed}_1.png")
        second.save(tmp_path / f"{seed}_2.png")
        union = (min(boxes[0][0], boxes[1][0]), min(boxes[0][1], boxes[1][1]), max(boxes[0][2], boxes[1][2]),
                 max(boxes[0][3], boxes[1][3]))  # fmt: skip
        grown = (truth[0] - 6, truth[1] - 6, truth[2] + 6, truth[3] + 6)  # overlaps the object: NMS keeps one
        candidates[seed] = [*boxes, truth, union, grown]
        truths.append(truth)
        rows.append({"image_path1": str(tmp_path / f"{seed}_1.png"), "image_path2": str(tmp_path / f"{seed}_2.png"),
                     "caption1": "A red block on a table.", "caption2": "A blue ball on a table."})  # fmt: skip
    generator = ImgDiffDifferenceAreaGenerator(
        {"max_score_2": 0.9},  # Data-Juicer's defaults otherwise
        image_similarity=PixelSimilarity(),
        detector=ObjectDetector(candidates),
        itm_scorer=AlwaysMatches(),
    )
    out = generator.process_chunk(pd.DataFrame(rows))
    assert [m.stats.calls for m in (generator.image_similarity, generator.detector, generator.itm_scorer)] == [2, 1, 1]
    for boxes, decisions, truth in zip(out["bboxes"], out[AREA_DECISIONS_KEY], truths, strict=True):
        assert iou(to_xyxy(boxes[0], "cxcywh", (320, 240)), truth) >= 0.7
        steps = {d["dropped_at"] for d in decisions if not d["kept"]}
        assert STEP_CROP_SIMILARITY in steps and STEP_NMS in steps  # unchanged objects; the overlapping copy
        for d in decisions:
            assert d["itm_scores1"] == {"block": 0.9} and d["itm_scores2"] == {"ball": 0.9}
            assert d["kept"] or d["drop_reason"]


def test_itm_drops_candidates_whose_crops_match_no_changed_noun(tmp_path: Path) -> None:
    first, second, _, truth = edited_pair((320, 240), 4, seed=1)
    first.save(tmp_path / "1.png")
    second.save(tmp_path / "2.png")
    row = {"image_path1": str(tmp_path / "1.png"), "image_path2": str(tmp_path / "2.png"),
           "caption1": "A red block.", "caption2": "A blue ball."}  # fmt: skip

    class NeverMatches(AlwaysMatches):
        def score(self, images: list[Image.Image], texts: list[str]) -> list[float]:
            return [0.01] * len(images)

    generator = ImgDiffDifferenceAreaGenerator(
        image_similarity=PixelSimilarity(), detector=ObjectDetector({0: [truth]}), itm_scorer=NeverMatches()
    )
    out = generator.process_chunk(pd.DataFrame([row]))
    decisions = out[AREA_DECISIONS_KEY][0]
    assert [d["source_image"] for d in decisions] == [1, 2]  # the box found in each image
    for decision in decisions:
        assert decision["dropped_at"] == STEP_ITM and "block" in decision["drop_reason"]
        assert decision["crop_similarity"] is None  # later steps never saw it
    assert out["bboxes"][0] == [[0, 0, 0, 0]] and "image_text_matching x2" in out[AREA_REASON_KEY][0]
