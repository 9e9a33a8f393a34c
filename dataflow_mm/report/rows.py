"""A step table's rows as JSON-able cells for the page (long text cut, image bytes as thumbnails)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dataflow_mm.common.errors import UserError
from dataflow_mm.report.locate import ReportError
from dataflow_mm.storage.formats import iter_table
from dataflow_mm.storage.media import is_image_struct

MAX_TEXT_CHARS = 20_000
THUMBS_DIR = "report_thumbs"
THUMB_PIXELS = 320


def _truncate(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"… [{len(text) - MAX_TEXT_CHARS} more characters not shown]"


def _cell(value: Any) -> Any:
    """A table cell as a JSON-able value (NaN and missing become None; numpy becomes Python)."""
    kind = type(value)
    if value is None or kind is bool or kind is int:
        return value
    if kind is str:
        return _truncate(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is list or kind is dict:
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays (parquet)
        return deep_clean(value.tolist())
    try:
        import pandas as pd

        if pd.isna(value) is True:
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def deep_clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): deep_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [deep_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return deep_clean(value.tolist())
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


_BYTES = (bytes, bytearray, memoryview)


def _thumbnail(data: bytes, thumbs: Path) -> str | None:
    """A JPEG thumbnail of image bytes under ``thumbs`` (named from the bytes); None when they are no image."""
    from dataflow_mm.common.errors import RowError
    from dataflow_mm.imaging.loading import load_image
    from dataflow_mm.imaging.saving import save_image_atomic
    from dataflow_mm.storage.naming import content_name

    target = thumbs / content_name("thumb", data, ".jpg")
    if target.is_file():
        return str(target)
    try:
        image = load_image(data)
    except RowError:
        return None
    image.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    try:
        save_image_atomic(image, target, quality=85)
    except OSError:  # a read-only cache: the row is still shown, without its picture
        return None
    return str(target)


def _image_cell(value: Any, thumbs: Path) -> Any:
    """Image bytes and ``{"bytes", "path"}`` structs as paths the page can link (other values unchanged)."""
    if isinstance(value, _BYTES):
        return _thumbnail(bytes(value), thumbs) if len(value) else None
    if is_image_struct(value):
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, _BYTES) and len(data):
            return _thumbnail(bytes(data), thumbs)
        return path if isinstance(path, str) and path else None
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1):
        items = list(value)
        if any(isinstance(v, _BYTES) or is_image_struct(v) for v in items):
            return [_image_cell(v, thumbs) for v in items]
    return value


def read_rows(
    table: Path, limit: int | None, known_total: int | None = None, thumbs: Path | None = None
) -> tuple[list[str], list[list[Any]], int]:
    """Columns (first-seen order), rows as lists aligned with them (at most ``limit``), and the total count.

    Past ``limit`` the rest of the table is only counted, unless ``known_total`` (a manifest's count) says it.
    Image bytes become thumbnails under ``thumbs`` (default: ``report_thumbs`` beside the table).
    """
    thumbs = thumbs if thumbs is not None else table.parent / THUMBS_DIR
    columns: list[str] = []
    position: dict[str, int] = {}
    rows: list[list[Any]] = []
    total = 0
    try:
        for chunk in iter_table(table, chunk_size=4096 if limit is None else max(1, min(4096, limit))):
            frame = chunk.frame
            total += len(frame)
            room = len(frame) if limit is None else max(0, limit - len(rows))
            if room == 0:
                if known_total is not None:
                    total = known_total
                    break
                continue
            names = [str(c) for c in frame.columns]
            for name in names:
                if name not in position:
                    position[name] = len(columns)
                    columns.append(name)
            slots = [position[name] for name in names]
            width = len(columns)
            for values in frame.iloc[:room].itertuples(index=False, name=None):
                row: list[Any] = [None] * width
                for slot, value in zip(slots, values, strict=True):
                    row[slot] = _cell(_image_cell(value, thumbs))
                rows.append(row)
    except UserError as exc:
        raise ReportError(f"Cannot read '{table}': {exc}") from exc
    width = len(columns)
    for row in rows:
        if len(row) < width:
            row.extend([None] * (width - len(row)))
    return columns, rows, total
