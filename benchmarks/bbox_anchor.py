"""The anchor's box step, written the way DataFlow-MM's ``ImageBboxGenerator`` does it, for ``bbox_stage.py``.

DataFlow-MM (``dataflow/operators/core_vision/generate/image_bbox_generator.py``) handles one row
at a time: it reads the image once for its size, then ``paint_text_box`` reads it again, darkens
it to 80%, draws each box with its number on a black label, and writes a JPEG (OpenCV's default
quality 95); the records are written as JSON lines at the end. Here with OpenCV when it is
installed, else the same steps with Pillow.

``dataflow_mm_functions(path)`` takes DataFlow-MM's own ``vp_normalize`` and ``paint_text_box`` from
that file of a DataFlow-MM checkout (parsed, not imported: the module imports the whole ``dataflow``
package), and ``run_dataflow_mm`` runs its ``run`` loop around them: read the image for its size,
normalize and pad the boxes, paint, and write the records at the end. Needs OpenCV.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

try:  # the anchor's own library, when present
    import cv2
except ImportError:  # pragma: no cover - depends on the machine
    cv2 = None

LIBRARY = "opencv" if cv2 is not None else "pillow"


def _size(path: str) -> tuple[int, int]:
    if cv2 is not None:
        height, width = cv2.imread(path).shape[:2]
        return width, height
    with Image.open(path) as image:
        return image.convert("RGB").size  # decoded, as cv2.imread decodes


def _paint(path: str, boxes: list[list[float]], target: Path) -> None:
    if cv2 is not None:
        image = cv2.imread(path)
        image = cv2.addWeighted(image, 0.8, image * 0, 0.2, 0)
        for number, (x, y, w, h) in enumerate(boxes, start=1):
            x, y, w, h = int(x), int(y), int(w), int(h)
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), 2)
            (tw, th), base = cv2.getTextSize(str(number), cv2.FONT_HERSHEY_SIMPLEX, 0.65, 2)
            cv2.rectangle(image, (x + 4, y + 20 - th - base), (x + 4 + tw, y + 20 + base), (0, 0, 0), -1)
            cv2.putText(image, str(number), (x + 4, y + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (255, 255, 255), 2)
        cv2.imwrite(str(target), image)
        return
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    image = image.point(lambda v: int(v * 0.8))
    draw = ImageDraw.Draw(image)
    for number, (x, y, w, h) in enumerate(boxes, start=1):
        x, y, w, h = int(x), int(y), int(w), int(h)
        draw.rectangle([x, y, x + w, y + h], outline=(0, 255, 0), width=2)
        left, top, right, bottom = draw.textbbox((x + 4, y + 4), str(number))
        draw.rectangle([left, top, right, bottom], fill=(0, 0, 0))
        draw.text((x + 4, y + 4), str(number), fill=(255, 255, 255))
    image.save(target, format="JPEG", quality=95)


def run_anchor_like(rows: list[dict[str, Any]], cache: Path, max_boxes: int = 10) -> int:
    """Process ``rows`` (``image`` and xywh ``bbox``) one at a time, as the anchor does; returns rows written."""
    cache.mkdir(parents=True, exist_ok=True)
    records = []
    for counter, row in enumerate(rows, start=1):
        path, boxes = row["image"], row["bbox"][:max_boxes]
        width, height = _size(path)  # first decode
        normalized = [
            [round(x / width, 3), round(y / height, 3), round((x + w) / width, 3), round((y + h) / height, 3)]
            for x, y, w, h in boxes
        ]
        normalized += [[0.0, 0.0, 0.0, 0.0]] * (max_boxes - len(normalized))
        target = cache / f"{counter}_bbox_vis.jpg"
        _paint(path, boxes, target)  # second decode, draw, encode
        count = sum(1 for b in normalized if sum(b) != 0)
        records.append({**row, "type": "with_bbox", "normalized_bbox": normalized, "image_with_bbox": str(target),
                        "valid_bboxes_num": count, "prompt": f"There are {count} regions."})  # fmt: skip
    with open(cache / "records.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return len(records)


DATAFLOW_MM_FILE = "dataflow/operators/core_vision/generate/image_bbox_generator.py"


def dataflow_mm_functions(checkout: Path) -> dict[str, Any]:
    """DataFlow-MM's ``vp_normalize`` and ``paint_text_box``, compiled from ``checkout``'s own source file."""
    import numpy as np

    if cv2 is None:
        raise SystemExit("DataFlow-MM's functions need OpenCV: pip install opencv-python-headless")
    source = (Path(checkout) / DATAFLOW_MM_FILE).read_text(encoding="utf-8")
    wanted = {"vp_normalize", "paint_text_box"}
    module = ast.parse(source)
    module.body = [node for node in module.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    namespace: dict[str, Any] = {"cv2": cv2, "np": np}
    exec(compile(module, str(Path(checkout) / DATAFLOW_MM_FILE), "exec"), namespace)
    missing = wanted - namespace.keys()
    if missing:
        raise SystemExit(f"{DATAFLOW_MM_FILE} in {checkout} has no {sorted(missing)}")
    return namespace


def run_dataflow_mm(rows: list[dict[str, Any]], cache: Path, functions: dict[str, Any], max_boxes: int = 10) -> int:
    """DataFlow-MM's ``ImageBboxGenerator.run`` loop over ``rows`` with its own functions; returns rows written."""
    normalize, paint = functions["vp_normalize"], functions["paint_text_box"]
    cache.mkdir(parents=True, exist_ok=True)
    records = []
    for counter, row in enumerate(rows, start=1):
        path, boxes = row["image"], row["bbox"]
        height, width = cv2.imread(path).shape[:2]
        normalized = [normalize(box, pad_x=0, pad_y=0, width=width, height=height) for box in boxes[:max_boxes]]
        normalized += [[0.0, 0.0, 0.0, 0.0]] * (max_boxes - len(normalized))
        target = str(cache / f"{counter}_bbox_vis.jpg")
        paint(path, boxes[:max_boxes], target)
        count = sum(1 for b in normalized if sum(b) != 0)
        records.append({**row, "type": "with_bbox", "normalized_bbox": normalized, "image_with_bbox": target,
                        "valid_bboxes_num": count, "prompt": f"There are {count} regions."})  # fmt: skip
    with open(cache / "records.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
