"""Img-Diff step 4: caption-pair similarity decides which boxes stay (parameters applied literally)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dataflow_mm.operators.imgdiff.box_decisions import new_decision
from dataflow_mm.operators.imgdiff.step4_similarity_filter import ImgDiffCaptionSimilarityFilter
from dataflow_mm.scoring import ClipTextSimilarity, text_similarity_model

pytestmark = pytest.mark.slow
PARAPHRASE = ("a red car parked on the street", "a red automobile parked by the road")
DIFFERENT = ("a red car parked on the street", "a small dog sleeping on a sofa")


def frame_of(*rows: list[tuple[str, str]]) -> pd.DataFrame:
    all_decisions = []
    for pairs in rows:
        decisions = []
        for index, (a, b) in enumerate(pairs):
            d = new_decision(index, [10 + index, 10, 5, 5])
            d["bbox_xyxy"] = [7.5 + index, 7.5, 12.5 + index, 12.5]
            d["region_caption1"], d["region_caption2"] = a, b
            decisions.append(d)
        all_decisions.append(decisions)
    return pd.DataFrame({"bbox_decisions": all_decisions})


def test_real_minilm_keeps_different_captions_and_drops_paraphrases(minilm_dir: Path) -> None:
    similarity = text_similarity_model(minilm_dir, device="cpu")
    op = ImgDiffCaptionSimilarityFilter(similarity, min_score=-1.0, max_score=0.6)
    out = op.process_chunk(frame_of([PARAPHRASE, DIFFERENT], [DIFFERENT]))
    first, second = out["bbox_decisions"][0]
    assert first["kept"] is False and first["dropped_at"] == "caption_similarity"
    assert first["caption_similarity"] > 0.6 and "outside [-1, 0.6]" in first["drop_reason"]
    assert second["kept"] and second["caption_similarity"] < 0.6
    assert out["bbox_decisions"][1][0]["kept"]
    assert similarity.stats.calls == 1  # all pairs of the chunk in one forward pass


def test_clip_identical_captions_are_dropped_under_a_max_score(tiny_clip_dir: Path) -> None:
    similarity = ClipTextSimilarity(tiny_clip_dir, device="cpu")
    op = ImgDiffCaptionSimilarityFilter(similarity, min_score=-1.0, max_score=0.999)
    out = op.process_chunk(frame_of([("a green tree", "a green tree"), ("a green tree", "a plate of food")]))
    same, other = out["bbox_decisions"][0]
    assert same["caption_similarity"] == pytest.approx(1.0, abs=1e-5) and not same["kept"]
    assert other["kept"] and -1.0 <= other["caption_similarity"] < 0.999


def test_min_score_is_applied_literally_and_dropped_boxes_are_skipped(tiny_clip_dir: Path) -> None:
    similarity = text_similarity_model(tiny_clip_dir)
    frame = frame_of([("a green tree", "a green tree"), ("a red car", "the sky is blue")])
    frame["bbox_decisions"][0][1].update(kept=False, dropped_at="image_text_matching", drop_reason="earlier")
    out = ImgDiffCaptionSimilarityFilter(similarity, min_score=0.99, max_score=1.0).process_chunk(frame)
    same, earlier = out["bbox_decisions"][0]
    assert same["kept"]  # identical captions: similarity 1.0 lies in [0.99, 1]
    assert earlier["dropped_at"] == "image_text_matching" and earlier["caption_similarity"] is None
