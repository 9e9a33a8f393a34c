"""Turn a run's output rows into training samples: images plus question/answer turns.

Two kinds of rows are recognised by their columns:

* **region captions** (``region_captions``): one sample per image, one turn per region, the
  question naming the region's box (in the chosen box style) and the answer its caption;
* **Img-Diff** (``bbox_decisions``): one sample per kept box with a difference caption, the
  question asking about the marked difference. With kept difference panels
  (``--keep_difference_images``) the sample shows the panel; otherwise both images.

What is left out is counted, never lost silently: rows with an ``error``, rows whose image cannot
be read, rows with nothing left to say; and within a row, regions with an empty caption or
dropped (``region_kept`` false, written by ``RegionCaptionVerifier``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflow_mm.errors import ERROR_COLUMN, ImageNotFoundError, RowError, UserError
from dataflow_mm.export.boxes import format_box
from dataflow_mm.imaging.bbox import to_xyxy
from dataflow_mm.imaging.loading import image_size
from dataflow_mm.operators.imgdiff_common import DECISIONS_KEY, IMAGE1_KEY, IMAGE2_KEY
from dataflow_mm.storage.formats import iter_table
from dataflow_mm.storage.manifest import StepManifest
from dataflow_mm.storage.media import resolve_media_path

REGION_CAPTIONS_KEY = "region_captions"
REGION_KEPT_KEY = "region_kept"
REGION_QUESTION = "Describe the region {box}."
PANEL_QUESTION = (
    "The left and right images are separated by a black bar. The red box marks the same area {box} in both. "
    "What is the difference inside the red boxes?"
)
PAIR_QUESTION = "What is the difference between the two images in the region {box}?"

# Why a row (or a region) was left out.
SKIP_ERROR = "row_error"
SKIP_UNUSABLE = "unusable"
SKIP_NOTHING = "no_caption_left"
SKIP_UNREADABLE = "unreadable_record"
REGION_EMPTY = "empty_caption"
REGION_DROPPED = "dropped"


@dataclass
class Sample:
    """One training example: its images (files on disk) and its turns (question, answer)."""

    id: str
    images: list[Path]
    turns: list[tuple[str, str]]


@dataclass
class ExportStats:
    """rows in = rows exported + rows skipped (by reason); regions left out by reason."""

    kind: str = ""
    rows_in: int = 0
    rows_exported: int = 0
    samples: int = 0
    turns: int = 0
    rows_skipped: Counter[str] = field(default_factory=Counter)
    regions_skipped: Counter[str] = field(default_factory=Counter)
    missing_images: dict[str, None] = field(default_factory=dict)  # image values not found, in order

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows_in": self.rows_in,
            "rows_exported": self.rows_exported,
            "rows_skipped": dict(self.rows_skipped),
            "samples": self.samples,
            "turns": self.turns,
            "regions_skipped": dict(self.regions_skipped),
        }


@dataclass
class RunContext:
    """What the rows alone do not say: the boxes' format and where relative image paths live."""

    bbox_format: str = "xywh"
    normalized: bool = False
    media_root: Path | None = None
    working_dir: Path | None = None  # the run's working folder, where its relative paths pointed

    @classmethod
    def from_steps(cls, steps: dict[int, Path]) -> RunContext:
        context = cls()
        for index in sorted(steps):
            manifest = StepManifest.load(steps[index])
            if manifest is None:
                continue
            if context.media_root is None and manifest.input_path:
                context.media_root = Path(manifest.input_path).parent
            if manifest.working_dir:  # the latest step's run wrote the rows' newest paths
                context.working_dir = Path(manifest.working_dir)
            config = manifest.params.get("config")
            if isinstance(config, dict) and "bbox_format" in config:
                context.bbox_format = str(config["bbox_format"])
                context.normalized = bool(config.get("normalized", False))
        return context


def detect_kind(columns: list[str]) -> str:
    """``region`` or ``imgdiff`` from a table's columns; a UserError for anything else."""
    if REGION_CAPTIONS_KEY in columns:
        return "region"
    if DECISIONS_KEY in columns:
        return "imgdiff"
    raise UserError(
        f"nothing to export: the table has neither '{REGION_CAPTIONS_KEY}' (region-caption pipeline, last step) "
        f"nor '{DECISIONS_KEY}' (Img-Diff pipeline); columns: {', '.join(columns[:20])}"
    )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value: Any) -> list[Any] | None:
    value = value.tolist() if hasattr(value, "tolist") and hasattr(value, "ndim") else value
    return list(value) if isinstance(value, (list, tuple)) else None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


class SampleBuilder:
    """Reads a step file and yields samples, counting everything it leaves out."""

    def __init__(self, table: Path, context: RunContext, box_style: str, image_key: str = "image") -> None:
        self.table = table
        self.context = context
        self.box_style = box_style
        self.image_key = image_key
        self.stats = ExportStats()

    def samples(self) -> Iterator[Sample]:
        for chunk in iter_table(self.table):
            if chunk.rejects:
                self.stats.rows_in += len(chunk.rejects)
                self.stats.rows_skipped[SKIP_UNREADABLE] += len(chunk.rejects)
            if not self.stats.kind and len(chunk.frame):
                self.stats.kind = detect_kind([str(c) for c in chunk.frame.columns])
            for row in chunk.frame.to_dict(orient="records"):
                self.stats.rows_in += 1
                row_id = str(row.get("id") or f"row{self.stats.rows_in - 1}")
                found = self._row_samples(row, row_id) if _missing(row.get(ERROR_COLUMN)) else SKIP_ERROR
                if isinstance(found, str):
                    self.stats.rows_skipped[found] += 1
                    continue
                self.stats.rows_exported += 1
                for sample in found:
                    self.stats.samples += 1
                    self.stats.turns += len(sample.turns)
                    yield sample

    def _row_samples(self, row: dict[str, Any], row_id: str) -> list[Sample] | str:
        try:
            samples = self._region(row, row_id) if self.stats.kind == "region" else self._imgdiff(row, row_id)
        except RowError as exc:  # image missing or unreadable, box not convertible
            return f"{SKIP_UNUSABLE}:{type(exc).__name__}"
        return samples or SKIP_NOTHING

    def _image(self, value: Any) -> tuple[Path, tuple[int, int]]:
        path = resolve_media_path(self._as_the_run_saw_it(value), self.context.media_root)
        try:
            return path, image_size(path)
        except ImageNotFoundError:
            self.stats.missing_images.setdefault(str(value)[:300], None)
            raise

    def _as_the_run_saw_it(self, value: Any) -> Any:
        """A relative path as the run resolved it: against its working folder first (recorded in the
        manifest), so the export finds ``./data/x.jpg`` from any folder; anything else as it is."""
        first = value[0] if isinstance(value, list) and value else value
        if self.context.working_dir is None or not isinstance(first, str) or not first:
            return value
        if "://" in first or Path(first).is_absolute():
            return value
        candidate = self.context.working_dir / first
        return str(candidate) if candidate.exists() else value

    def _region(self, row: dict[str, Any], row_id: str) -> list[Sample]:
        captions = _as_list(row.get(REGION_CAPTIONS_KEY)) or []
        boxes = _as_list(row.get("bbox")) or []
        kept = _as_list(row.get(REGION_KEPT_KEY)) or [True] * len(captions)
        path, size = self._image(row.get(self.image_key))
        turns = []
        for caption, box, keep in zip(captions, boxes, kept, strict=False):
            if not keep:
                self.stats.regions_skipped[REGION_DROPPED] += 1
                continue
            if not _text(caption):
                self.stats.regions_skipped[REGION_EMPTY] += 1
                continue
            xyxy = to_xyxy(box, self.context.bbox_format, size, self.context.normalized)
            turns.append((REGION_QUESTION.format(box=format_box(xyxy, size, self.box_style)), _text(caption)))
        return [Sample(row_id, [path], turns)] if turns else []

    def _imgdiff(self, row: dict[str, Any], row_id: str) -> list[Sample]:
        samples = []
        for decision in _as_list(row.get(DECISIONS_KEY)) or []:
            if not isinstance(decision, dict) or not decision.get("kept"):
                continue
            caption = _text(decision.get("difference_caption"))
            if not caption or not decision.get("bbox_xyxy"):
                self.stats.regions_skipped[REGION_EMPTY] += 1
                continue
            path1, size = self._image(row.get(IMAGE1_KEY))
            box = format_box(decision["bbox_xyxy"], size, self.box_style)
            sample_id = f"{row_id}_box{decision.get('index', len(samples))}"
            if decision.get("difference_image"):
                panel, _ = self._image(decision["difference_image"])
                samples.append(Sample(sample_id, [panel], [(PANEL_QUESTION.format(box=box), caption)]))
            else:
                path2, _ = self._image(row.get(IMAGE2_KEY))
                samples.append(Sample(sample_id, [path1, path2], [(PAIR_QUESTION.format(box=box), caption)]))
        return samples
