"""BlipITMScorer on the tiny random-weight BLIP ITM model: probabilities, batching, one load, call counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.common.errors import ModelNotAvailableError
from dataflow_mm.scoring import BlipITMScorer

pytestmark = pytest.mark.slow


def crops(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (20 + 7 * i, 30 + 3 * i), ((40 * i) % 256, 120, 200 - 10 * i)) for i in range(n)]


TEXTS = ["a red car", "a small dog sleeping on a sofa", "a green tree", "the sky is blue", "a cup", "a plate", "x"]


def test_scores_are_probabilities_batched_and_counted(tiny_blip_dir: Path) -> None:
    scorer = BlipITMScorer(tiny_blip_dir, device="auto", batch_size=3)
    assert not scorer.loaded and scorer.is_smoke_test_model
    scores = scorer.score(crops(7), TEXTS)
    assert len(scores) == 7 and all(0.0 <= s <= 1.0 for s in scores)
    assert scorer.stats.calls == 3 and scorer.stats.items == 7 and scorer.stats.loads == 1
    assert scorer.device_in_use == "cpu"

    one_at_a_time = BlipITMScorer(tiny_blip_dir, device="cpu", batch_size=1)
    singles = one_at_a_time.score(crops(7), TEXTS)
    assert singles == pytest.approx(scores, abs=1e-4)  # batching does not change the scores
    assert one_at_a_time.stats.calls == 7

    scorer.score(crops(2), TEXTS[:2])
    assert scorer.stats.loads == 1  # loaded once, reused
    scorer.cleanup()
    assert not scorer.loaded


def test_empty_input_loads_nothing_and_mismatch_is_refused(tiny_blip_dir: Path) -> None:
    scorer = BlipITMScorer(tiny_blip_dir)
    assert scorer.score([], []) == []
    assert not scorer.loaded and scorer.stats.calls == 0
    with pytest.raises(ValueError, match="as many images as texts"):
        scorer.score(crops(2), ["one"])


def test_missing_model_fails_clearly_or_falls_back_when_allowed(
    tiny_blip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelNotAvailableError, match="is not available"):
        BlipITMScorer("no-such-org/no-such-blip").load()
    monkeypatch.setenv("DATAFLOW_MM_TINY_DIR", str(tiny_blip_dir.parent))
    fallback = BlipITMScorer("no-such-org/no-such-blip", allow_tiny_fallback=True)
    assert len(fallback.score(crops(1), ["a red car"])) == 1
    assert fallback.is_smoke_test_model and fallback.describe()["smoke_test_model"]
