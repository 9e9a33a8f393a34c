"""Cropping a box: integer bounds, clipping, at least one pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dataflow_mm.common.errors import InvalidBoxError
from dataflow_mm.imaging import crop_box


@pytest.fixture
def image():
    """100x50 image whose pixel (x, y) holds (x, y, 0), so a crop shows where it came from."""
    xs, ys = np.meshgrid(np.arange(100), np.arange(50))
    return Image.fromarray(np.dstack([xs, ys, np.zeros_like(xs)]).astype(np.uint8))


def test_integer_box(image):
    crop = crop_box(image, (10, 5, 30, 25))
    assert crop.size == (20, 20)
    assert crop.getpixel((0, 0)) == (10, 5, 0)
    assert crop.getpixel((19, 19)) == (29, 24, 0)


def test_fractional_box_uses_floor_and_ceil(image):
    crop = crop_box(image, (10.7, 5.2, 30.1, 24.9))
    assert crop.size == (21, 20)  # x 10..31, y 5..25
    assert crop.getpixel((0, 0)) == (10, 5, 0)


def test_tiny_box_is_at_least_one_pixel(image):
    assert crop_box(image, (10.2, 10.2, 10.3, 10.3)).size == (1, 1)
    assert crop_box(image, (99.5, 49.5, 120, 60)).size == (1, 1)


def test_partially_outside_box_is_clipped(image):
    crop = crop_box(image, (-20, -10, 30, 200))
    assert crop.size == (30, 50)
    assert crop.getpixel((0, 0)) == (0, 0, 0)
    assert crop_box(image, (90, 40, 150, 80)).size == (10, 10)


@pytest.mark.parametrize("box", [(200, 10, 220, 20), (10, 10, 5, 20), (0, 0, 0, 0)])
def test_fully_outside_or_degenerate_box_raises(image, box):
    with pytest.raises(InvalidBoxError):
        crop_box(image, box)


def test_crop_is_independent_of_the_source(image):
    crop = crop_box(image, (0, 0, 10, 10))
    crop.putpixel((0, 0), (255, 255, 255))
    assert image.getpixel((0, 0)) == (0, 0, 0)
