"""Caption similarity: CLIP text encoder and sentence-transformers behind one interface, chosen by the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflow_mm.common.errors import UserError
from dataflow_mm.scoring import (
    ClipTextSimilarity,
    SentenceTransformerSimilarity,
    similarity_kind_of,
    text_similarity_model,
)

pytestmark = pytest.mark.slow


def test_kind_comes_from_the_folder_not_the_name(tiny_clip_dir: Path, tiny_blip_dir: Path, minilm_dir: Path,
                                                 tmp_path: Path) -> None:  # fmt: skip
    assert similarity_kind_of(tiny_clip_dir) == "clip_text"
    assert similarity_kind_of(minilm_dir) == "sentence_transformers"
    with pytest.raises(UserError, match="neither a sentence-transformers model"):
        similarity_kind_of(tiny_blip_dir)
    # A CLIP folder renamed to look like a sentence-transformers model is still CLIP.
    renamed = tmp_path / "all-MiniLM-L6-v2"
    renamed.mkdir()
    (renamed / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert similarity_kind_of(renamed) == "clip_text"


def test_clip_similarity_is_a_batched_cosine(tiny_clip_dir: Path) -> None:
    scorer = text_similarity_model(tiny_clip_dir, device="auto", batch_size=2)
    a = ["a red car", "a small dog sleeping on a sofa", "a green tree"]
    b = ["a red car", "the sky is blue", "a plate of food"]
    scores = scorer.similarity(a, b)
    assert scorer.kind == ClipTextSimilarity.kind and scorer.is_smoke_test_model
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 for s in scores)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # identical captions
    assert scores[1] < 0.999 and scores[2] < 0.999
    assert scorer.stats.calls == 3 and scorer.stats.items == 5  # 5 distinct texts, 2 per forward pass
    direct = ClipTextSimilarity(tiny_clip_dir, device="cpu", batch_size=64)
    assert direct.similarity(a, b) == pytest.approx(scores, abs=1e-5)
    assert direct.stats.calls == 1
    assert scorer.similarity([], []) == []
    with pytest.raises(ValueError, match="equal length"):
        scorer.similarity(["a"], [])


def test_minilm_paraphrases_score_high_and_different_captions_low(minilm_dir: Path) -> None:
    scorer = text_similarity_model(minilm_dir, device="cpu")
    paraphrase, different = scorer.similarity(
        ["a red car parked on the street", "a red car parked on the street"],
        ["a red automobile parked by the road", "a small dog sleeping on a sofa"],
    )
    assert scorer.kind == SentenceTransformerSimilarity.kind and not scorer.is_smoke_test_model
    assert paraphrase > 0.8 and different < 0.3
    assert scorer.stats.calls == 1 and scorer.stats.loads == 1
