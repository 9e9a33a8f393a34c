"""OWLv2 open-vocabulary detection through transformers, batched: one forward pass per batch of images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.common.errors import UserError
from dataflow_mm.scoring.object_detection import OwlDetector

pytestmark = pytest.mark.slow


def test_each_image_gets_boxes_for_its_own_queries_in_one_call(tiny_owlv2_dir: Path) -> None:
    detector = OwlDetector(tiny_owlv2_dir, device="cpu", threshold=0.0, max_boxes=3)
    images = [Image.new("RGB", (320, 240), "red"), Image.new("RGB", (100, 200), "blue"), Image.new("RGB", (64, 64))]
    queries = [["plane"], ["boat", "cloud"], []]
    found = detector.detect(images, queries)
    assert detector.stats.calls == 1 and detector.stats.items == 2  # the image without queries is not sent
    assert found[2] == [] and 1 <= len(found[0]) <= 3 and 1 <= len(found[1]) <= 3
    for detections, image, labels in zip(found, images, queries, strict=True):
        for d in detections:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
            assert d.label in labels and 0.0 <= d.score <= 1.0
    assert detector.is_smoke_test_model
    small = OwlDetector(tiny_owlv2_dir, device="cpu", batch_size=1, threshold=0.0)
    small.detect(images, queries)
    assert small.stats.calls == 2


def test_only_owl_models_and_no_fastsam_checkpoint(tiny_clip_dir: Path) -> None:
    with pytest.raises(UserError, match="FastSAM"):
        OwlDetector("FastSAM-x.pt")
    with pytest.raises(UserError, match="OWLv2"):
        OwlDetector(tiny_clip_dir, device="cpu").detect([Image.new("RGB", (64, 64))], [["cat"]])
