"""Crop a box out of an image (for region-level prompts and Img-Diff object crops)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from dataflow_mm.imaging.bbox import clip_box


def crop_box(image: Image.Image, xyxy: Sequence[float]) -> Image.Image:
    """The pixels covering pixel box ``xyxy``, clipped to the image (floor/ceil edges, >= 1 px).

    Follows the clipping rule of :mod:`dataflow_mm.imaging.bbox`: degenerate or fully-outside
    boxes raise :class:`~dataflow_mm.common.errors.InvalidBoxError`.
    """
    width, height = image.size
    x0, y0, x1, y1 = clip_box(xyxy, (width, height))
    left, top = min(math.floor(x0), width - 1), min(math.floor(y0), height - 1)
    right, bottom = max(math.ceil(x1), left + 1), max(math.ceil(y1), top + 1)
    return image.crop((left, top, right, bottom))
