"""Visual prompts: numbered boxes for region captions, a red box and side-by-side pairs for Img-Diff.

Every function returns a new RGB image; the input image is never modified. Boxes are pixel
xyxy in the displayed image (see :mod:`dataflow_mm.imaging.bbox`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from PIL import Image, ImageColor, ImageDraw, ImageFont

Color = tuple[int, int, int]

# Bright, mutually distinct colours (after Sasha Trubetskoy's list); cycled beyond 12 boxes.
PALETTE: tuple[Color, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)
RED: Color = (255, 0, 0)


def default_line_width(size: tuple[int, int]) -> int:
    """Outline width that stays visible after a VLM's resize: ~0.5% of the short side, >= 2 px."""
    return max(2, round(min(size) / 200))


def label_font_size(size: tuple[int, int]) -> int:
    """Label text height: ~4% of the short side, >= 14 px, so numbers survive a VLM's resize."""
    return max(14, round(min(size) / 25))


def draw_numbered_boxes(
    image: Image.Image,
    boxes_xyxy: Sequence[Sequence[float]],
    line_width: int | None = None,
    colors: Sequence[Color | str] | None = None,
) -> Image.Image:
    """Copy of ``image`` with box ``i`` outlined in its own colour and tagged with the number ``i+1``.

    The tag (filled with the box colour) sits inside the top-left corner of the box, moved inward
    where needed so that it stays inside the image.
    """
    out = _rgb_copy(image)
    palette = tuple(colors) if colors else PALETTE
    width = line_width or default_line_width(out.size)
    font = _font(label_font_size(out.size))
    draw = ImageDraw.Draw(out)
    for index, box in enumerate(boxes_xyxy):
        color = _rgb(palette[index % len(palette)])
        rect = _pixel_rect(box, out.size)
        draw.rectangle(rect, outline=color, width=width)
        _draw_tag(out, str(index + 1), rect[:2], color, font)
    return out


def draw_red_box(image: Image.Image, xyxy: Sequence[float], padding: int = 5, width: int = 3) -> Image.Image:
    """Copy of ``image`` with a red outline around ``xyxy`` grown by ``padding``, clamped to the image."""
    out = _rgb_copy(image)
    x0, y0, x1, y1 = xyxy
    rect = _pixel_rect((x0 - padding, y0 - padding, x1 + padding, y1 + padding), out.size)
    ImageDraw.Draw(out).rectangle(rect, outline=RED, width=width)
    return out


def side_by_side(
    left: Image.Image, right: Image.Image, bar_width: int = 10, bar_color: Color = (0, 0, 0)
) -> Image.Image:
    """``left | bar | right`` with ``right`` resized to ``left``'s height (aspect kept)."""
    left, right = _rgb_copy(left), _rgb_copy(right)
    height = left.height
    if right.height != height:
        new_width = max(1, round(right.width * height / right.height))
        right = right.resize((new_width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (left.width + bar_width + right.width, height), tuple(bar_color))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + bar_width, 0))
    return canvas


def _rgb(color: Color | str | Sequence[int]) -> Color:
    """An ``(r, g, b)`` tuple from a colour name, ``#hex`` string or RGB sequence."""
    if isinstance(color, str):
        return ImageColor.getrgb(color)[:3]
    red, green, blue = (int(c) for c in color[:3])
    return (red, green, blue)


def _rgb_copy(image: Image.Image) -> Image.Image:
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def _pixel_rect(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Inclusive pixel rectangle for ``ImageDraw`` from continuous xyxy edges, inside the image."""
    width, height = size
    x0, y0, x1, y1 = (round(v) for v in box)
    x0, x1 = _clamp(x0, 0, width - 1), _clamp(x1 - 1, 0, width - 1)
    y0, y1 = _clamp(y0, 0, height - 1), _clamp(y1 - 1, 0, height - 1)
    return (x0, y0, max(x0, x1), max(y0, y1))


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px (scalable with FreeType, else the fixed bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_color(color: Color) -> Color:
    """Black on light tags, white on dark ones."""
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _draw_tag(
    out: Image.Image,
    text: str,
    corner: tuple[int, int],
    color: Color,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """A filled label tag with ``text`` whose top-left is at ``corner``, shifted into the image.

    The tag is rendered once per (text, font, colour) and pasted: the same pixels as drawing it in
    place (its fill covers the whole tag), without rasterizing the text again for every box of every row.
    """
    tag = _tag_image(text, color, font)
    x = _clamp(corner[0], 0, max(0, out.width - tag.width))
    y = _clamp(corner[1], 0, max(0, out.height - tag.height))
    out.paste(tag, (x, y))


@lru_cache(maxsize=512)
def _tag_image(text: str, color: Color, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """The tag of ``text`` on ``color``: its bounding box plus a padding of a quarter of the text height."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 4)
    tag = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), color)
    ImageDraw.Draw(tag).text((pad - left, pad - top), text, fill=_text_color(color), font=font)
    return tag
