"""Region proposals for rows without boxes, and difference boxes for Img-Diff pairs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dataflow_mm.imaging import box_area, difference_boxes, iou, propose_boxes

BACKGROUND = (235, 233, 228)
SHAPES = {  # xyxy of each solid shape drawn by shapes_image()
    "red rectangle": (50, 60, 250, 200),
    "blue rectangle": (420, 90, 740, 260),
    "green ellipse": (150, 330, 370, 560),
}


def shapes_image() -> Image.Image:
    """Solid rectangles and an ellipse on a plain background (800x600)."""
    image = Image.new("RGB", (800, 600), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = SHAPES["red rectangle"]
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(200, 30, 30))
    x0, y0, x1, y1 = SHAPES["blue rectangle"]
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(30, 60, 200))
    x0, y0, x1, y1 = SHAPES["green ellipse"]
    draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=(20, 150, 40))
    return image


def photo_like(seed: int = 0, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A textured, photo-like scene: smooth colour clouds, fine grain and a few blurred objects."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(60, 190, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    clouds = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    grain = rng.normal(0, 8, (height, width, 3))
    scene = Image.fromarray(np.clip(clouds + grain, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(scene)
    draw.ellipse((80, 100, 220, 260), fill=(240, 220, 40))
    draw.rectangle((380, 250, 560, 420), fill=(30, 30, 90))
    return scene


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def best_iou(target, boxes):
    return max((iou(target, box) for box in boxes), default=0.0)


@pytest.mark.parametrize("encode", [False, True], ids=["png", "jpeg"])
def test_proposals_find_solid_shapes_on_plain_background(encode):
    image = jpeg(shapes_image()) if encode else shapes_image()
    boxes = propose_boxes(image)
    assert len(boxes) == 3
    for name, target in SHAPES.items():
        assert best_iou(target, boxes) >= 0.7, name
    areas = [box_area(b) for b in boxes]
    assert areas == sorted(areas, reverse=True)


def test_proposals_respect_max_boxes_and_min_area():
    image = shapes_image()
    ImageDraw.Draw(image).rectangle((700, 500, 709, 509), fill=(0, 0, 0))  # 100 px: 0.02% of the image
    assert len(propose_boxes(image)) == 3
    assert len(propose_boxes(image, min_area_ratio=0.0001)) == 4
    largest = propose_boxes(image, max_boxes=1)
    assert len(largest) == 1
    assert iou(largest[0], SHAPES["blue rectangle"]) >= 0.7


def test_uniform_image_gives_no_proposals():
    assert propose_boxes(Image.new("RGB", (300, 200), (90, 140, 200))) == []
    assert propose_boxes(jpeg(Image.new("RGB", (300, 200), (90, 140, 200)))) == []


def test_photo_like_image_gives_sensible_boxes():
    image = jpeg(photo_like())
    boxes = propose_boxes(image, max_boxes=5)
    assert 1 <= len(boxes) <= 5
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= image.width
        assert 0 <= y0 < y1 <= image.height
    assert best_iou((80, 100, 220, 260), boxes) >= 0.6  # the two objects stand out of the texture
    assert best_iou((380, 250, 560, 420), boxes) >= 0.6


def test_non_uniform_image_never_gives_an_empty_list():
    ramp = np.linspace(100, 130, 256, dtype=np.float32)  # a faint gradient: nothing stands out
    gradient = Image.fromarray(np.tile(ramp, (128, 1)).astype(np.uint8)).convert("RGB")
    assert propose_boxes(gradient) == [(0.0, 0.0, 256.0, 128.0)]


def edited_pair(jpeg_second: bool = False):
    """A photo-like image and a copy where one object was painted in (its box is returned too)."""
    base = photo_like(seed=1)
    edited = base.copy()
    target = (300, 120, 420, 230)
    ImageDraw.Draw(edited).ellipse((300, 120, 419, 229), fill=(220, 60, 160))
    return base, jpeg(edited) if jpeg_second else edited, target


@pytest.mark.parametrize("jpeg_second", [False, True], ids=["exact", "jpeg"])
def test_difference_boxes_find_the_edited_object(jpeg_second):
    base, edited, target = edited_pair(jpeg_second)
    boxes = difference_boxes(base, edited)
    assert len(boxes) == 1
    assert iou(boxes[0], target) >= 0.7


def test_difference_boxes_when_both_images_are_re_encoded():
    base, edited, target = edited_pair()
    boxes = difference_boxes(jpeg(base, 85), jpeg(edited, 70))
    assert best_iou(target, boxes) >= 0.7
    assert len(boxes) <= 2


def test_difference_boxes_resize_the_second_image():
    base, edited, target = edited_pair()
    boxes = difference_boxes(base, edited.resize((320, 240), Image.Resampling.LANCZOS))
    assert best_iou(target, boxes) >= 0.7


def test_difference_boxes_several_edits_and_max_boxes():
    base = photo_like(seed=2)
    edited = base.copy()
    draw = ImageDraw.Draw(edited)
    draw.rectangle((20, 20, 159, 119), fill=(255, 255, 255))
    draw.rectangle((400, 300, 479, 379), fill=(0, 0, 0))
    boxes = difference_boxes(base, edited)
    assert len(boxes) == 2
    assert iou(boxes[0], (20, 20, 160, 120)) >= 0.7  # largest first
    assert iou(boxes[1], (400, 300, 480, 380)) >= 0.7
    assert len(difference_boxes(base, edited, max_boxes=1)) == 1


def test_identical_images_have_no_difference():
    base = photo_like(seed=3)
    assert difference_boxes(base, base.copy()) == []


def test_uniformity_is_checked_on_the_uint8_work_image_without_wrapping() -> None:
    from dataflow_mm.imaging.proposals import UNIFORM_RANGE, _downscale, _is_uniform

    pixels, _ = _downscale(Image.new("RGB", (600, 400), (200, 10, 250)))
    assert pixels.dtype == np.uint8 and max(pixels.shape[:2]) == 256  # no float copy of the work image
    assert _is_uniform(pixels)
    spread = np.full((4, 4, 3), 100, dtype=np.uint8)
    spread[0, 0, 1] = 100 + int(UNIFORM_RANGE)
    assert _is_uniform(spread)  # within the range
    spread[0, 0, 1] += 1
    assert not _is_uniform(spread)  # just beyond it
    extremes = np.zeros((2, 2, 3), dtype=np.uint8)
    extremes[1, 1] = 255
    assert not _is_uniform(extremes)  # 255 - 0 does not wrap around in uint8
