"""Img-Diff steps 2+3: crops checked against their captions with BLIP ITM; keep/drop by the score range."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dataflow_mm.operators.imgdiff.box_decisions import candidate_decisions
from dataflow_mm.operators.imgdiff.step2_itm_filter import ImgDiffImageTextMatchingFilter
from dataflow_mm.scoring import BlipITMScorer
from tests.support.imgdiff_pairs import write_imgdiff_table

pytestmark = pytest.mark.slow
CAPTIONS = ["a red car", "a small dog sleeping on a sofa", "a green tree", "the sky is blue", "a cup", "a plate"]


def captioned_frame(tmp_path: Path, n_rows: int = 3, n_boxes: int = 2) -> pd.DataFrame:
    """Rows as step 1 leaves them: decisions with both region captions filled in."""
    frame = pd.read_json(write_imgdiff_table(tmp_path, n_rows, n_boxes), lines=True)
    all_decisions = []
    for row, raw in enumerate(frame["bboxes"]):
        decisions = candidate_decisions(raw, "cxcywh", False, (320, 240))
        for number, d in enumerate(decisions):
            d["region_caption1"] = CAPTIONS[(row + number) % len(CAPTIONS)]
            d["region_caption2"] = CAPTIONS[(row + number + 2) % len(CAPTIONS)]
        all_decisions.append(decisions)
    frame["bbox_decisions"] = all_decisions
    return frame


class SpyScorer(BlipITMScorer):
    """The real scorer, remembering what it was asked to score."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[list[Image.Image], list[str]]] = []

    def score(self, images, texts):
        self.seen.append((list(images), list(texts)))
        return super().score(images, texts)


def test_full_range_keeps_every_box_and_records_both_scores(tmp_path: Path, tiny_blip_dir: Path) -> None:
    scorer = SpyScorer(tiny_blip_dir, batch_size=64)
    out = ImgDiffImageTextMatchingFilter(scorer, min_score=0.0, max_score=1.0).process_chunk(captioned_frame(tmp_path))
    assert len(scorer.seen) == 1 and scorer.stats.calls == 1  # every crop of the chunk in one call
    images, texts = scorer.seen[0]
    assert len(images) == 12
    first = out["bbox_decisions"][0][0]
    x0, y0, x1, y1 = first["bbox_xyxy"]
    assert (
        images[0].size == (math.ceil(x1) - math.floor(x0), math.ceil(y1) - math.floor(y0)) == images[1].size
    )  # same box in both
    assert texts[:2] == [first["region_caption1"], first["region_caption2"]]
    for decisions in out["bbox_decisions"]:
        for d in decisions:
            assert d["kept"] and 0.0 <= d["itm_score1"] <= 1.0 and 0.0 <= d["itm_score2"] <= 1.0


def test_threshold_between_scores_keeps_exactly_the_boxes_whose_crops_both_pass(
    tmp_path: Path, tiny_blip_dir: Path
) -> None:
    scorer = BlipITMScorer(tiny_blip_dir)
    frame = captioned_frame(tmp_path, n_rows=4, n_boxes=3)
    scored = ImgDiffImageTextMatchingFilter(scorer, 0.0, 1.0).process_chunk(frame)["bbox_decisions"]
    pairs = [(d["itm_score1"], d["itm_score2"]) for decisions in scored for d in decisions]
    everything = sorted(s for pair in pairs for s in pair)
    threshold = everything[len(everything) // 2]  # the median score: some boxes pass, some do not
    expected = [min(pair) >= threshold for pair in pairs]
    assert any(expected) and not all(expected)

    out = ImgDiffImageTextMatchingFilter(scorer, min_score=threshold, max_score=1.0).process_chunk(frame)
    decisions = [d for row in out["bbox_decisions"] for d in row]
    assert [d["kept"] for d in decisions] == expected
    for d in decisions:
        if not d["kept"]:
            assert d["dropped_at"] == "image_text_matching"
            assert f"outside [{threshold:g}, 1]" in d["drop_reason"]


def test_max_score_drops_too_and_dropped_boxes_are_not_rescored(tmp_path: Path, tiny_blip_dir: Path) -> None:
    scorer = SpyScorer(tiny_blip_dir)
    out = ImgDiffImageTextMatchingFilter(scorer, min_score=0.0, max_score=0.01).process_chunk(
        captioned_frame(tmp_path, 2, 2)
    )
    assert not any(d["kept"] for row in out["bbox_decisions"] for d in row)
    again = ImgDiffImageTextMatchingFilter(scorer, 0.0, 1.0).process_chunk(out)
    assert scorer.seen[-1] == ([], [])  # nothing left to score
    assert again["bbox_decisions"].tolist() == out["bbox_decisions"].tolist()


def test_invalid_range_is_refused(tiny_blip_dir: Path) -> None:
    with pytest.raises(ValueError, match="min_score <= max_score"):
        ImgDiffImageTextMatchingFilter(BlipITMScorer(tiny_blip_dir), min_score=0.9, max_score=0.1)
