"""Synthetic Img-Diff image pairs (a scene and an edited copy) for tests and benchmarks; no files need to ship."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from dataflow_mm.imaging.bbox import Box, from_xyxy
from tests.support.sample_data import write_jsonl

COLORS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (160, 60, 200), (40, 200, 200)]
BACKGROUND = (238, 236, 230)


def edited_pair(
    size: tuple[int, int] = (320, 240), n_objects: int = 4, seed: int = 0, edit: str = "recolour"
) -> tuple[Image.Image, Image.Image, list[Box], Box]:
    """A scene with ``n_objects`` rectangles (one per column) and a copy where one object was edited.

    Every object covers less than 1/18 of the image (under Img-Diff's default 1/10 area limit).

    ``edit``: ``"recolour"`` (same place, another colour), ``"remove"`` (background instead) or
    ``"add"`` (a new disc in an empty part of the copy). Returns both images, every object's
    pixel xyxy box, and the box of the edited area.
    """
    if edit not in ("recolour", "remove", "add"):
        raise ValueError(f"unknown edit {edit!r}")
    rng = random.Random(seed)
    width, height = size
    first = Image.new("RGB", size, BACKGROUND)
    second = first.copy()
    d1, d2 = ImageDraw.Draw(first), ImageDraw.Draw(second)
    cell = width // n_objects
    boxes: list[Box] = []
    chosen = rng.randrange(n_objects)
    edited: Box = (0.0, 0.0, 0.0, 0.0)
    for index in range(n_objects):
        w = rng.randint(max(8, min(cell, width // 6) // 3), max(9, min(cell - 12, width // 6)))
        h = rng.randint(height // 8, height // 3)  # each object < 1/18 of the image
        x = index * cell + rng.randint(2, max(2, cell - w - 2))
        y = rng.randint(4, max(4, height // 2 - h))  # upper half, so "add" has room below
        color = COLORS[(seed + index) % len(COLORS)]
        d1.rectangle([x, y, x + w - 1, y + h - 1], fill=color)
        box = (float(x), float(y), float(x + w), float(y + h))
        boxes.append(box)
        if index == chosen and edit == "recolour":
            d2.rectangle([x, y, x + w - 1, y + h - 1], fill=COLORS[(seed + index + 3) % len(COLORS)])
            edited = box
        elif index == chosen and edit == "remove":
            edited = box
        else:
            d2.rectangle([x, y, x + w - 1, y + h - 1], fill=color)
    if edit == "add":
        r = max(6, min(width, height) // 10)
        cx, cy = rng.randint(r + 2, width - r - 2), rng.randint(height * 3 // 4 - r // 2, height - r - 2)
        d2.ellipse([cx - r, cy - r, cx + r - 1, cy + r - 1], fill=(20, 20, 20))
        edited = (float(cx - r), float(cy - r), float(cx + r), float(cy + r))
    return first, second, boxes, edited


def write_imgdiff_table(
    folder: str | Path,
    n_pairs: int,
    n_boxes: int = 4,
    size: tuple[int, int] = (320, 240),
    without_boxes: int = 0,
    bbox_format: str = "cxcywh",
    quality: int = 92,
) -> Path:
    """``n_pairs`` JPEG pairs plus ``table.jsonl`` (``image_path1``, ``image_path2``, ``bboxes`` in ``bbox_format``).

    The last ``without_boxes`` rows have no ``bboxes`` field.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for index in range(n_pairs):
        first, second, boxes, _ = edited_pair(size, n_boxes, seed=index)
        path1, path2 = folder / f"pair{index:04d}_1.jpg", folder / f"pair{index:04d}_2.jpg"
        first.save(path1, quality=quality)
        second.save(path2, quality=quality)
        row: dict[str, Any] = {"id": index, "image_path1": str(path1), "image_path2": str(path2)}
        if index < n_pairs - without_boxes:
            row["bboxes"] = [[round(v, 2) for v in from_xyxy(b, bbox_format, size)] for b in boxes]  # type: ignore[arg-type]
        rows.append(row)
    return write_jsonl(folder / "table.jsonl", rows)


# Caption pairs that differ by one object, as Img-Diff's generated pairs do (Prompt-to-Prompt).
CAPTION_PAIRS = (
    ("A red car parked on the street.", "A red bicycle parked on the street."),
    ("A dog sleeping on a sofa.", "A cat sleeping on a sofa."),
    ("A plane flying over the clouds.", "A boat sailing over the clouds."),
    ("An apple on a wooden table.", "A cup on a wooden table."),
)


def write_captioned_pairs(
    folder: str | Path,
    n_pairs: int,
    size: tuple[int, int] = (160, 120),
    dj_meta: bool = False,
    edit: str = "recolour",
) -> Path:
    """``n_pairs`` PNG pairs plus ``table.jsonl`` with ``caption1``/``caption2`` and no boxes (real Img-Diff input).

    ``dj_meta``: every row also carries Data-Juicer's empty ``__dj__meta__`` dict.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for index in range(n_pairs):
        first, second, _, _ = edited_pair(size, 4, seed=index, edit=edit)
        path1, path2 = folder / f"cap{index:04d}_1.png", folder / f"cap{index:04d}_2.png"
        first.save(path1)
        second.save(path2)
        caption1, caption2 = CAPTION_PAIRS[index % len(CAPTION_PAIRS)]
        row: dict[str, Any] = {"id": index, "image_path1": str(path1), "image_path2": str(path2),
                               "caption1": caption1, "caption2": caption2}  # fmt: skip
        if dj_meta:
            row["__dj__meta__"] = {}
        rows.append(row)
    return write_jsonl(folder / "table.jsonl", rows)
