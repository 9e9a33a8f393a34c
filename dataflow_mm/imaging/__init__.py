"""Image helpers shared by the operators: boxes, safe loading, drawing, crops, proposals, atomic image writes.

Pure Pillow/numpy/scipy, everything in memory. Boxes are pixel ``xyxy`` of the image as displayed
unless a function says otherwise; the clipping rule is documented in :mod:`.bbox`.
"""

from dataflow_mm.imaging.bbox import (
    BOX_FORMATS,
    Box,
    BoxFormat,
    BoxParseResult,
    box_area,
    clip_box,
    from_xyxy,
    iou,
    normalize_xyxy,
    pad_boxes,
    parse_box,
    parse_boxes,
    to_xyxy,
)
from dataflow_mm.imaging.crop import crop_box
from dataflow_mm.imaging.draw import PALETTE, draw_numbered_boxes, draw_red_box, side_by_side
from dataflow_mm.imaging.loading import DEFAULT_MAX_PIXELS, image_size, load_image, to_rgb
from dataflow_mm.imaging.proposals import difference_boxes, propose_boxes
from dataflow_mm.imaging.saving import image_format_for, save_image_atomic

__all__ = [
    "BOX_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "PALETTE",
    "Box",
    "BoxFormat",
    "BoxParseResult",
    "box_area",
    "clip_box",
    "crop_box",
    "difference_boxes",
    "draw_numbered_boxes",
    "draw_red_box",
    "from_xyxy",
    "image_format_for",
    "image_size",
    "iou",
    "load_image",
    "normalize_xyxy",
    "pad_boxes",
    "parse_box",
    "parse_boxes",
    "propose_boxes",
    "save_image_atomic",
    "side_by_side",
    "to_rgb",
    "to_xyxy",
]
