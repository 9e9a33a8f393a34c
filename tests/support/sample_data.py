"""Synthetic images and tables for tests and benchmarks (no files need to ship)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

PALETTE = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 40), (160, 60, 200), (40, 200, 200)]


def scene_with_boxes(size: tuple[int, int], n_boxes: int, seed: int) -> tuple[Image.Image, list[list[int]]]:
    """A plain background with ``n_boxes`` filled rectangles; returns the image and their ``xywh`` boxes."""
    rng = random.Random(seed)
    width, height = size
    image = Image.new("RGB", size, (240, 240, 235))
    draw = ImageDraw.Draw(image)
    boxes = []
    for index in range(n_boxes):
        w, h = rng.randint(width // 10, width // 4), rng.randint(height // 10, height // 4)
        x, y = rng.randint(0, width - w - 1), rng.randint(0, height - h - 1)
        draw.rectangle([x, y, x + w, y + h], fill=PALETTE[index % len(PALETTE)])
        boxes.append([x, y, w, h])
    return image, boxes


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines (UTF-8, unicode kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_region_caption_table(
    folder: str | Path,
    n_rows: int,
    size: tuple[int, int] = (320, 240),
    n_boxes: int = 3,
    without_boxes: int = 0,
    quality: int = 90,
) -> Path:
    """``n_rows`` JPEG scenes plus a table in the seed's input format; the last ``without_boxes`` rows have no bbox."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n_rows):
        image, boxes = scene_with_boxes(size, n_boxes, seed=index)
        path = folder / f"scene_{index:05d}.jpg"
        image.save(path, quality=quality)
        row: dict[str, Any] = {"id": index, "image": str(path)}
        if index < n_rows - without_boxes:
            row["bbox"] = boxes
        rows.append(row)
    return write_jsonl(folder / "table.jsonl", rows)
