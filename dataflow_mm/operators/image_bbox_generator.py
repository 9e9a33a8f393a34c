"""ImageBboxGenerator: numbered boxes drawn on each image, plus the region-caption prompt.

Rows with boxes use them (``type = "with_bbox"``); rows without get boxes proposed from the
image itself (``type = "without_bbox"``). The drawn image is named from its own bytes, so runs
never overwrite each other's files and an identical re-run reuses them.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from dataflow_mm.checks import check_choice, check_int
from dataflow_mm.errors import ERROR_COLUMN, ConfigError, InvalidBoxError, RowError, row_error_text
from dataflow_mm.imaging.bbox import BOX_FORMATS, from_xyxy, normalize_xyxy, pad_boxes, parse_boxes
from dataflow_mm.imaging.draw import draw_numbered_boxes
from dataflow_mm.imaging.loading import load_image
from dataflow_mm.imaging.proposals import propose_boxes
from dataflow_mm.operators.base import OperatorABC
from dataflow_mm.operators.keys import KeySpec
from dataflow_mm.operators.params import ParamSpec
from dataflow_mm.operators.report_view import ReportView
from dataflow_mm.storage.atomic import DurableBatch
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.media import resolve_media_path, several_images_note, write_jpeg

DEFAULT_REGION_PROMPT = (
    "Describe the content of each marked region in the image. There are {n} regions: <region1> to <region{n}>."
)
DEFAULT_BBOX_KEY = "bbox"
OUTPUT_FIELDS = ("type", "bbox", "normalized_bbox", "result_file", "valid_bboxes_num", "bbox_dropped", "warning")


@dataclass
class ExistingBBoxDataGenConfig:
    """Settings of ImageBboxGenerator (the seed's config, plus the box format and drawing options).

    ``output_jsonl_path``, when given, receives a copy of the step's rows.
    ``input_jsonl_path`` is accepted for compatibility; the rows come from the storage.
    """

    max_boxes: int = 10
    input_jsonl_path: str | None = None
    output_jsonl_path: str | None = None
    bbox_format: str = "xywh"
    normalized: bool = False
    propose_when_missing: bool = True
    image_output_dir: str | None = None
    line_width: int | None = None
    jpeg_quality: int = 92
    num_workers: int | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ConfigError`` (exit 2, one line) naming the first field outside its allowed values."""
        name = type(self).__name__
        check_int(f"{name}.max_boxes", self.max_boxes, 1)
        check_choice(f"{name}.bbox_format", self.bbox_format, BOX_FORMATS)
        check_int(f"{name}.line_width", self.line_width, 1, optional=True)
        check_int(f"{name}.jpeg_quality", self.jpeg_quality, 1, 100)
        check_int(f"{name}.num_workers", self.num_workers, 1, optional=True)


def _is_empty(raw: Any) -> bool:
    if raw is None or (isinstance(raw, float) and raw != raw):
        return True
    return hasattr(raw, "__len__") and not isinstance(raw, str) and len(raw) == 0


def _plain_numbers(box: list[float]) -> list[float | int]:
    return [int(v) if float(v).is_integer() else round(float(v), 3) for v in box]


class ImageBboxGenerator(OperatorABC):
    """Draw numbered boxes on each row's image and build the prompt that asks about each region.

    The image cell may hold any form :mod:`dataflow_mm.storage.media` reads. A list of images is
    drawn from its first image, and the row's ``warning`` says how many there were (else null).
    """

    # What the HTML report's region-caption page shows of the output (column names: the defaults).
    report_view = ReportView(
        "region_caption",
        roles={
            "image": "image_with_bbox",
            "original": "image",
            "boxes": "bbox",
            "normalizedBoxes": "normalized_bbox",
            "prompt": "prompt",
            "dropped": "bbox_dropped",
        },
        identifies=(("image_with_bbox",),),
    )
    key_spec = KeySpec(
        defaults={
            "input_image_key": "image",
            "input_bbox_key": DEFAULT_BBOX_KEY,
            "output_image_key": "image_with_bbox",
            "output_prompt_key": "prompt",
        },
        reads=("input_image_key",),
        writes=("output_image_key", "output_prompt_key"),
        # rows without boxes get proposed ones; a box column the caller named must exist, or every row
        # would silently get proposals instead of the caller's boxes
        optional=("input_bbox_key",),
    )
    holds_model = False
    # the worker count and the (unused) input path do not change the output
    param_spec = ParamSpec(exclude=("config.num_workers", "config.input_jsonl_path"))

    def __init__(self, config: ExistingBBoxDataGenConfig | None = None, prompt_template: str = DEFAULT_REGION_PROMPT):
        self.config = config or ExistingBBoxDataGenConfig()
        self.config.check()  # again: fields may have been set after the config was built
        if not isinstance(prompt_template, str):
            raise ConfigError(f"ImageBboxGenerator.prompt_template must be a string, not {prompt_template!r}")
        self.prompt_template = prompt_template
        self._image_dir = Path(self.config.image_output_dir) if self.config.image_output_dir else None
        self._media_root: Path | None = None

    def output_columns(self, **keys: Any) -> list[str]:
        return [*OUTPUT_FIELDS, *super().output_columns(**keys)]

    def extra_output_paths(self) -> list[Path]:
        return [Path(self.config.output_jsonl_path)] if self.config.output_jsonl_path else []

    def prepare(self, storage: FileStorage) -> None:
        self._image_dir = Path(self.config.image_output_dir or storage.cache_path)
        self._image_dir.mkdir(parents=True, exist_ok=True)
        self._media_root = storage.media_root

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        if self._image_dir is None:
            self._image_dir = Path(".")
        images = frame[keys["input_image_key"]].tolist()
        boxes = (
            frame[keys["input_bbox_key"]].tolist() if keys["input_bbox_key"] in frame.columns else [None] * len(frame)
        )
        workers = self.config.num_workers or min(4, os.cpu_count() or 1)
        batch = DurableBatch()  # the chunk's drawn images made durable at once, not one fsync per image
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                rendered = list(pool.map(self._render_row, images, boxes, [batch] * len(images)))
            batch.commit()
        except BaseException:
            batch.discard()
            raise
        notes = [several_images_note(value, keys["input_image_key"]) for value in images]
        out = frame.copy()
        renamed = {
            **{name: name for name in OUTPUT_FIELDS},
            "image_with_bbox": keys["output_image_key"],
            "prompt": keys["output_prompt_key"],
        }
        for source, target in renamed.items():
            values = [None if isinstance(item, RowError) else item[source] for item in rendered]
            out[target] = pd.Series(values, index=out.index, dtype=object)  # an int stays an int beside None
        out["warning"] = notes
        out[ERROR_COLUMN] = [
            row_error_text(item) if isinstance(item, RowError) else previous
            for item, previous in zip(rendered, out[ERROR_COLUMN], strict=True)
        ]
        return out

    def _render_row(self, image_value: Any, raw_boxes: Any, batch: DurableBatch) -> dict[str, Any] | RowError:
        try:
            return self._render(image_value, raw_boxes, batch)
        except RowError as exc:
            return exc

    def _render(self, image_value: Any, raw_boxes: Any, batch: DurableBatch) -> dict[str, Any]:
        cfg = self.config
        path = resolve_media_path(image_value, self._media_root, self._media_cache)
        image = load_image(path)
        size = image.size
        dropped: list[str] = []
        if _is_empty(raw_boxes) and cfg.propose_when_missing:
            kind, boxes_xyxy = "without_bbox", list(propose_boxes(image, max_boxes=cfg.max_boxes))
            if not boxes_xyxy:
                raise InvalidBoxError("the row has no boxes and none could be proposed (the image looks uniform)")
        else:
            parsed = parse_boxes(raw_boxes, cfg.bbox_format, size, cfg.normalized, cfg.max_boxes)
            kind, boxes_xyxy = "with_bbox", list(parsed.boxes_xyxy)
            dropped = [reason for _, _, reason in parsed.rejected]
            if parsed.truncated:
                dropped.append(f"{parsed.truncated} valid boxes beyond max_boxes={cfg.max_boxes}")
            if not boxes_xyxy:
                detail = "; ".join(dropped) or "the box list is empty"
                raise InvalidBoxError(f"no valid box in {str(raw_boxes)[:200]}: {detail}")
        drawn = draw_numbered_boxes(image, boxes_xyxy, line_width=cfg.line_width)
        image_path = self._save(drawn, path.stem, batch)
        n = len(boxes_xyxy)
        return {
            "type": kind,
            "bbox": [_plain_numbers(list(from_xyxy(b, cfg.bbox_format, size, cfg.normalized))) for b in boxes_xyxy],
            "normalized_bbox": pad_boxes([normalize_xyxy(b, size) for b in boxes_xyxy], cfg.max_boxes),
            "result_file": str(self._image_dir),
            "image_with_bbox": image_path,
            "valid_bboxes_num": n,
            "prompt": self.prompt_template.format(n=n),
            "bbox_dropped": dropped,
            "warning": None,
        }

    def _save(self, drawn: Image.Image, stem: str, batch: DurableBatch) -> str:
        assert self._image_dir is not None
        return write_jpeg(drawn, self._image_dir, f"{stem}_bbox_vis", self.config.jpeg_quality, batch)
