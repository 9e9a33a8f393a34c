"""RegionCaptionVerifier: each region caption scored against its box's crop with BLIP ITM (one scorer call
per chunk), scores aligned with the captions, regions below the threshold dropped with the reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dataflow_mm.core.results import describe_metrics, histograms
from dataflow_mm.operators.region_caption.caption_verifier import RegionCaptionVerifier
from dataflow_mm.pipeline.templates import load_pipeline_script
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from tests.support.sample_data import write_region_caption_table


class RecordingScorer(BlipITMScorer):
    """A BLIP scorer whose score is the crop's mean red share: a red region matches, others do not."""

    def __init__(self) -> None:
        super().__init__("unused")
        self.calls: list[int] = []
        self.sizes: list[tuple[int, int]] = []

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        self.calls.append(len(images))
        self.sizes += [image.size for image in images]
        return [image.convert("RGB").getpixel((image.width // 2, image.height // 2))[0] / 255 for image in images]


def frame_with_regions(tmp_path: Path) -> pd.DataFrame:
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 100, 50))  # region 1 (top-left) is red
    image.save(tmp_path / "a.png")
    region_boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.25, 1.0]]
    return pd.DataFrame(
        {
            "image": [str(tmp_path / "a.png"), str(tmp_path / "a.png"), str(tmp_path / "missing.png")],
            "normalized_bbox": [[*region_boxes, [0, 0, 0, 0]], region_boxes, region_boxes],
            "region_captions": [["a red square", "blue", ""], ["x", "", ""], ["y", "z", ""]],
            "bbox_dropped": [[], ["box 4: outside the image"], []],
            "error": [None, None, None],
        }
    )


def test_scores_align_with_captions_and_one_scorer_call_per_chunk(tmp_path: Path) -> None:
    scorer = RecordingScorer()
    out = RegionCaptionVerifier(scorer=scorer, min_region_score=0.5).process_chunk(frame_with_regions(tmp_path))
    assert scorer.calls == [3]  # 2 + 1 non-empty captions of the two readable rows, one call
    assert scorer.sizes[:2] == [(100, 50), (100, 50)]  # crops of the boxes, in pixels
    assert out["region_caption_scores"][0] == [1.0, 0.0, None]
    assert out["region_kept"][0] == [True, False, True]
    assert out["bbox_dropped"][0] == ["region 2: caption match score 0.0000 < min_region_score 0.5"]
    assert out["bbox_dropped"][1] == ["box 4: outside the image"]  # earlier reasons kept
    assert out["region_captions"][0] == ["a red square", "blue", ""]  # captions stay aligned with the boxes
    assert out["error"][2].startswith("ImageNotFoundError")
    assert pd.isna(out["error"][0])


def test_without_a_threshold_every_region_is_kept(tmp_path: Path) -> None:
    out = RegionCaptionVerifier(scorer=RecordingScorer()).process_chunk(frame_with_regions(tmp_path))
    assert out["region_kept"][0] == [True, True, True] and out["bbox_dropped"][0] == []


def test_threshold_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="min_region_score"):
        RegionCaptionVerifier(scorer=RecordingScorer(), min_region_score=1.5)


def test_metrics_give_a_score_histogram() -> None:
    frame = pd.DataFrame(
        {"region_caption_scores": [[0.05, 0.95, None], [0.55]], "region_kept": [[False, True, True], [True]]}
    )
    metrics = RegionCaptionVerifier(scorer=RecordingScorer()).chunk_metrics(frame)
    assert histograms(metrics)["region_caption_score"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert metrics["region_captions_scored"] == 3 and metrics["region_captions_kept"] == 3
    assert "region_caption_score per 0.1 bin [1 0 0 0 0 1 0 0 0 1]" in describe_metrics(metrics)


def test_pipeline_with_verify_regions_on_tiny_blip(tmp_path: Path, tiny_blip_dir: Path) -> None:
    """The shipped script's pipeline: step 4 scores every parsed region with a real (tiny) BLIP; report shows it."""
    from tests.support.fake_serving import FakeVLMServing

    table = write_region_caption_table(tmp_path / "imgs", n_rows=3, size=(160, 120), n_boxes=1)
    pipeline = load_pipeline_script("image_region_caption_pipeline").ImageRegionCaptionPipeline(
        FakeVLMServing(),
        first_entry_file=str(table),
        cache_path=str(tmp_path / "cache"),
        output_image_with_bbox_path=None,
        verify_regions=True,
        min_region_score=1.0,
        blip_model=str(tiny_blip_dir),
    )
    summary = pipeline.run()
    rows = [json.loads(line) for line in (tmp_path / "cache" / "region_caption_step4.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert len(row["region_caption_scores"]) == len(row["region_captions"]) == 1
        assert 0.0 <= row["region_caption_scores"][0] < 1.0
        assert row["region_kept"] == [False] and row["bbox_dropped"][0].startswith("region 1: caption match score")
    assert sum(histograms(summary.metrics)["region_caption_score"]) == 3
    assert pipeline.region_verifier.scorer.stats.calls == 1
    html = (tmp_path / "cache" / "report.html").read_text()
    assert 'class="histogram"' in html and "region_caption_score" in html


def test_script_flags_threshold_implies_verification_and_bad_threshold_exits_2() -> None:
    script = load_pipeline_script("image_region_caption_pipeline")
    assert script.parse_args([]).verify_regions is False
    args = script.parse_args(["--min_region_score", "0.2"])
    assert args.verify_regions is True and args.min_region_score == 0.2
    with pytest.raises(SystemExit) as exited:
        script.parse_args(["--min_region_score", "2"])
    assert exited.value.code == 2
