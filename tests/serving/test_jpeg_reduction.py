"""Which reduced scale a JPEG photo may be decoded at for a model, checked with the model's own processor:
the reduced image must come out of the processor at the very size (and so the very tokens) of the whole one."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.models.processor_loading import load_processor
from dataflow_mm.serving.jpeg_reduction import jpeg_reduction

SIZES = [(4000, 3000), (3000, 4000), (4032, 3024), (2400, 1800), (1001, 750), (640, 480), (160, 120), (8000, 200)]


def grid(processor, size: tuple[int, int], **kwargs) -> list[int]:
    """The processor's patch grid (t, h, w) for an image of ``size``: what sets the prompt's image tokens."""
    return processor.image_processor(images=[Image.new("RGB", size)], **kwargs)["image_grid_thw"].tolist()[0]


@pytest.mark.parametrize("kwargs", [{}, {"max_pixels": 6272}, {"max_pixels": 1280 * 28 * 28}])
def test_a_reduction_gives_the_processor_the_same_size_and_never_one_to_enlarge(tiny_qwen_dir: Path, kwargs) -> None:
    processor = load_processor(tiny_qwen_dir)
    reduce = jpeg_reduction(processor, kwargs)
    assert reduce is not None
    reduced = {size: reduce(size) for size in SIZES}
    assert reduced[(1001, 750)] is None  # no exact half, quarter or eighth
    assert reduced[(4000, 3000)] is not None and reduced[(3000, 4000)] is not None
    for size, smaller in reduced.items():
        if smaller is None:
            continue
        assert smaller in [(size[0] // s, size[1] // s) for s in (2, 4, 8)]
        t, h, w = grid(processor, size, **kwargs)
        assert grid(processor, smaller, **kwargs) == [t, h, w], size
        patch = processor.image_processor.patch_size
        assert smaller[0] >= w * patch and smaller[1] >= h * patch, size  # the processor shrinks it


def test_the_default_budget_decodes_a_12_mp_photo_at_half_and_a_small_one_whole(tiny_qwen_dir: Path) -> None:
    reduce = jpeg_reduction(load_processor(tiny_qwen_dir), {"max_pixels": 1280 * 28 * 28})
    assert reduce((4000, 3000)) == (2000, 1500)
    assert reduce((640, 480)) is None


def test_a_processor_that_does_not_resize_by_pixel_budget_gets_none(tiny_llava_dir: Path) -> None:
    assert jpeg_reduction(load_processor(tiny_llava_dir), {}) is None
    assert jpeg_reduction(object(), {}) is None
