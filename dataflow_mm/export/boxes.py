"""How a box is written into a training question, in the convention of the model family.

* ``qwen2_5_vl``: absolute pixel coordinates ``[x0, y0, x1, y1]`` of the image file, as
  Qwen2.5-VL's grounding data uses them. A box (50, 50, 250, 260) on a 640x480 image is written
  ``[50, 50, 250, 260]``. (Qwen2.5-VL's processor resizes images to multiples of 28 px; trainers
  that feed a resized image must scale the box by the same factor.)
* ``normalized``: integers 0–1000 relative to the image size (Qwen2-VL, InternVL, Kosmos-2 style).
  The same box on the same image is written ``[78, 104, 391, 542]``.
"""

from __future__ import annotations

from collections.abc import Sequence

BOX_STYLES = ("qwen2_5_vl", "normalized")
NORMALIZED_SCALE = 1000


def format_box(xyxy: Sequence[float], image_size: tuple[int, int], style: str) -> str:
    """``"[x0, y0, x1, y1]"`` for a pixel xyxy box on an image of ``image_size`` (W, H), in ``style``."""
    if style not in BOX_STYLES:
        raise ValueError(f"unknown box style {style!r}; expected one of {', '.join(BOX_STYLES)}")
    width, height = image_size
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    if style == "normalized":
        values = [x0 / width, y0 / height, x1 / width, y1 / height]
        numbers = [min(NORMALIZED_SCALE, max(0, round(v * NORMALIZED_SCALE))) for v in values]
    else:
        numbers = [round(x0), round(y0), round(x1), round(y1)]
    return "[" + ", ".join(str(n) for n in numbers) + "]"
