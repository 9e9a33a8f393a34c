"""CLIP image-pair similarity: cosine of image embeddings, all images of a call embedded in batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.scoring.image_similarity import ClipImageSimilarity

pytestmark = pytest.mark.slow


def test_pairs_are_scored_in_batches(tiny_clip_dir: Path) -> None:
    scorer = ClipImageSimilarity(tiny_clip_dir, device="cpu", batch_size=4)
    red, blue = Image.new("RGB", (90, 70), "red"), Image.new("L", (40, 60), 200)
    scores = scorer.similarity([red, red, blue], [red, blue, blue])
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and scores[2] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= scores[1] <= 1.0
    assert scorer.stats.calls == 2 and scorer.stats.items == 6 and scorer.stats.loads == 1  # 6 images, 4 a pass
    assert scorer.similarity([], []) == [] and scorer.stats.calls == 2
    with pytest.raises(ValueError, match="equal length"):
        scorer.similarity([red], [])
