"""Visual prompts: numbered boxes, red box, side-by-side pairs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dataflow_mm.imaging import PALETTE, draw_numbered_boxes, draw_red_box, side_by_side

GRAY = (128, 128, 128)
BOXES = [(20, 30, 120, 110), (200, 40, 380, 200), (60, 160, 160, 280)]


def edge_points(box, inset=1):
    """Points on the four edges of an xyxy box (away from the top-left label tag)."""
    x0, y0, x1, y1 = box
    right, bottom = x1 - 1 - inset, y1 - 1 - inset
    xs = np.linspace(x0 + (x1 - x0) * 0.6, right, 4).round().astype(int)
    ys = np.linspace(y0 + (y1 - y0) * 0.6, bottom, 4).round().astype(int)
    return (
        [(int(x), y0 + inset) for x in xs]
        + [(int(x), bottom) for x in xs]
        + [(x0 + inset, int(y)) for y in ys]
        + [(right, int(y)) for y in ys]
    )


def test_numbered_boxes_outline_each_box_in_its_colour():
    image = Image.new("RGB", (400, 300), GRAY)
    drawn = draw_numbered_boxes(image, BOXES)
    assert drawn.size == image.size
    for box, color in zip(BOXES, PALETTE, strict=False):
        for point in edge_points(box):
            assert drawn.getpixel(point) == color, (box, point)
        centre = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
        assert drawn.getpixel(centre) == GRAY  # outlines only


def test_numbered_boxes_have_a_label_tag_at_the_top_left():
    image = Image.new("RGB", (400, 300), GRAY)
    drawn = np.asarray(draw_numbered_boxes(image, BOXES))
    for box, color in zip(BOXES, PALETTE, strict=False):
        x0, y0 = box[:2]
        corner = drawn[y0 : y0 + 16, x0 : x0 + 10].reshape(-1, 3).astype(int)
        tag_pixels = np.all(corner == color, axis=1).sum()
        near_black = np.abs(corner).max(axis=1) < 60
        near_white = np.abs(corner - 255).max(axis=1) < 60
        assert tag_pixels > 30  # the filled tag
        assert (near_black | near_white).sum() >= 5  # the digit drawn on it


def test_labels_differ_between_boxes():
    image = Image.new("RGB", (200, 200), GRAY)
    one = np.asarray(draw_numbered_boxes(image, [(10, 10, 90, 90)], colors=[(255, 225, 25)]))
    two = np.asarray(draw_numbered_boxes(image, [(10, 10, 90, 90)] * 2, colors=[(255, 225, 25)]))
    assert not np.array_equal(one[10:30, 10:30], two[10:30, 10:30])  # "1" is redrawn as "2"


def test_numbered_boxes_leave_the_input_unchanged():
    image = Image.new("RGB", (400, 300), GRAY)
    before = image.tobytes()
    drawn = draw_numbered_boxes(image, BOXES)
    assert drawn is not image
    assert image.tobytes() == before


def test_tag_stays_inside_the_image_for_a_box_at_the_bottom_right_corner():
    image = Image.new("RGB", (100, 80), GRAY)
    drawn = np.asarray(draw_numbered_boxes(image, [(97, 77, 100, 80)], colors=[(0, 130, 200)]))
    assert np.all(drawn[-5:, -5:] == (0, 130, 200), axis=2).any()
    assert np.all(drawn == (0, 130, 200), axis=2).sum() > 30


def test_line_width_scales_with_image_size_and_can_be_set():
    big = draw_numbered_boxes(Image.new("RGB", (2000, 2000), GRAY), [(500, 500, 1500, 1500)])
    assert big.getpixel((1500 - 10, 1000)) == PALETTE[0]  # default width 10 px on a 2000 px image
    assert big.getpixel((1500 - 11, 1000)) == GRAY
    thin = draw_numbered_boxes(Image.new("RGB", (2000, 2000), GRAY), [(500, 500, 1500, 1500)], line_width=1)
    assert thin.getpixel((1500 - 2, 1000)) == GRAY


def test_custom_colours_by_name_or_tuple():
    image = Image.new("RGB", (100, 100), GRAY)
    drawn = draw_numbered_boxes(image, [(10, 10, 40, 40), (50, 50, 90, 90)], colors=["#00ff00", (0, 0, 255)])
    assert drawn.getpixel((39, 30)) == (0, 255, 0)
    assert drawn.getpixel((89, 70)) == (0, 0, 255)


def test_non_rgb_input_is_drawn_in_colour():
    drawn = draw_numbered_boxes(Image.new("L", (100, 100), 50), [(10, 10, 90, 90)])
    assert drawn.mode == "RGB"
    assert drawn.getpixel((89, 50)) == PALETTE[0]


def test_red_box_is_padded():
    image = Image.new("RGB", (200, 100), GRAY)
    drawn = draw_red_box(image, (50, 30, 150, 70), padding=5, width=3)
    for point in [(45, 50), (47, 50), (154, 50), (152, 50), (100, 25), (100, 74), (45, 25)]:
        assert drawn.getpixel(point) == (255, 0, 0), point
    for point in [(44, 50), (48, 50), (155, 50), (100, 28), (100, 50)]:
        assert drawn.getpixel(point) == GRAY, point
    assert image.getpixel((45, 50)) == GRAY


def test_red_box_is_clamped_at_the_image_border():
    image = Image.new("RGB", (200, 100), GRAY)
    drawn = draw_red_box(image, (0, 0, 200, 100), padding=5, width=2)
    for point in [(0, 50), (1, 50), (199, 50), (100, 0), (100, 99), (0, 0), (199, 99)]:
        assert drawn.getpixel(point) == (255, 0, 0), point
    assert drawn.getpixel((2, 50)) == GRAY


def test_side_by_side_resizes_right_and_puts_a_bar_between():
    left = Image.new("RGB", (100, 80), (255, 0, 0))
    right = Image.new("RGB", (50, 20), (0, 0, 255))
    pair = side_by_side(left, right, bar_width=10)
    assert pair.size == (100 + 10 + 200, 80)  # right scaled 4x to height 80
    assert pair.getpixel((50, 40)) == (255, 0, 0)
    for x in (100, 105, 109):
        for y in (0, 40, 79):
            assert pair.getpixel((x, y)) == (0, 0, 0)
    assert pair.getpixel((110, 40)) == (0, 0, 255)
    assert pair.getpixel((309, 79)) == (0, 0, 255)


@pytest.mark.parametrize(("bar_width", "bar_color"), [(0, (0, 0, 0)), (4, (255, 255, 255))])
def test_side_by_side_bar_options(bar_width, bar_color):
    left = Image.new("RGB", (10, 10), GRAY)
    pair = side_by_side(left, Image.new("L", (10, 10), 10), bar_width=bar_width, bar_color=bar_color)
    assert pair.size == (20 + bar_width, 10)
    if bar_width:
        assert pair.getpixel((11, 5)) == bar_color


def _tags_drawn_in_place(image: Image.Image, boxes: list[tuple[float, ...]]) -> Image.Image:
    """The numbered boxes as drawn before tags were cached: each tag filled and its text rasterized in place."""
    from dataflow_mm.imaging.draw import _font, _pixel_rect, _text_color, default_line_width, label_font_size

    out = image.copy()
    font = _font(label_font_size(out.size))
    draw = ImageDraw.Draw(out)
    for index, box in enumerate(boxes):
        color, rect = PALETTE[index % len(PALETTE)], _pixel_rect(box, out.size)
        draw.rectangle(rect, outline=color, width=default_line_width(out.size))
        left, top, right, bottom = draw.textbbox((0, 0), str(index + 1), font=font)
        pad = max(2, (bottom - top) // 4)
        tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
        x = max(0, min(rect[0], max(0, out.width - tag_w)))
        y = max(0, min(rect[1], max(0, out.height - tag_h)))
        draw.rectangle((x, y, x + tag_w - 1, y + tag_h - 1), fill=color)
        draw.text((x + pad - left, y + pad - top), str(index + 1), fill=_text_color(color), font=font)
    return out


@pytest.mark.parametrize("size", [(8, 6), (160, 120), (1024, 768)])
def test_cached_tags_give_the_pixels_of_tags_drawn_in_place(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(size[0])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    boxes = [
        (float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in rng.integers(-5, max(size), (14, 4)) + 1
    ]
    boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    assert draw_numbered_boxes(image, boxes).tobytes() == _tags_drawn_in_place(image, boxes).tobytes()
