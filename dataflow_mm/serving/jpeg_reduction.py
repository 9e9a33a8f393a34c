"""JPEG photos decoded at a reduced scale where the model's processor would shrink them anyway.

The Qwen2-VL family's image processors (``smart_resize``) scale every image into their pixel budget
(``min_pixels``..``max_pixels``, in multiples of patch x merge pixels): under the default budget a
4000x3000 photo becomes 1148x840. Decoding that JPEG whole (54 ms) and having vLLM's processor shrink it
(64 ms) is CPU work for the thread that feeds the engine. libjpeg decodes a half, a quarter or an eighth
of each side directly (25 ms for a half). A reduced size is used only when it divides the image exactly
and is at least the processor's size in both sides, and the processor's own ``smart_resize`` makes the
very same size of it: the prompt keeps the tokens the token budget counted, and the processor still
resamples the image down to its size itself.
"""

from __future__ import annotations

import sys
from typing import Any

from dataflow_mm.imaging.loading import Reduction

SCALES = (8, 4, 2)  # the reductions libjpeg decodes directly, the largest first


def jpeg_reduction(processor: Any, processor_kwargs: dict[str, Any] | None = None) -> Reduction | None:
    """For a processor that resizes by pixel budget, a function from a JPEG's size to the smallest exact
    reduction the processor resizes to the same size (None when none does); None for any other processor."""
    image_processor = getattr(processor, "image_processor", None)
    resize = getattr(sys.modules.get(type(image_processor).__module__), "smart_resize", None)
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    kwargs = processor_kwargs or {}
    min_pixels = _pixel_bound(image_processor, kwargs, "min_pixels", "shortest_edge")
    max_pixels = _pixel_bound(image_processor, kwargs, "max_pixels", "longest_edge")
    if not callable(resize) or not isinstance(patch, int) or not isinstance(merge, int):
        return None
    if not isinstance(min_pixels, int) or not isinstance(max_pixels, int):
        return None

    def resized(width: int, height: int) -> tuple[int, int] | None:
        try:
            return tuple(resize(height, width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels))
        except Exception:  # e.g. an aspect ratio the processor refuses: it will say so itself
            return None

    def reduced(size: tuple[int, int]) -> tuple[int, int] | None:
        width, height = size
        wanted = resized(width, height)
        if wanted is None:
            return None
        for scale in SCALES:
            smaller = (width // scale, height // scale)
            exact = width % scale == 0 and height % scale == 0
            covers = smaller[0] >= wanted[1] and smaller[1] >= wanted[0]  # the processor shrinks it, never enlarges
            if exact and covers and resized(*smaller) == wanted:
                return smaller
        return None

    return reduced


def _pixel_bound(image_processor: Any, kwargs: dict[str, Any], name: str, edge: str) -> Any:
    """``name`` (``min_pixels``/``max_pixels``) as the processor will use it: the call's kwarg, else the ``size``
    of the call or of the processor (transformers 5 keeps the bounds there as ``edge``), else its attribute."""
    if kwargs.get(name):
        return kwargs[name]
    for size in (kwargs.get("size"), getattr(image_processor, "size", None)):
        value = size.get(edge) if isinstance(size, dict) else getattr(size, edge, None)
        if value:
            return value
    return getattr(image_processor, name, None)
