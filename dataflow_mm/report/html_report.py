"""One self-contained HTML file that shows what a pipeline run produced.

``write_report(cache_path)`` reads a step file of a cache folder (the last step by default), the
run summary and the step manifests, and writes ``{cache_path}/report.html``:

* a header with the run summary (rows in/out/rejected/with error, model, backend, sampling and
  operator parameters, the steps, the rejected records);
* the rows, page by page, with a search box. The rows travel as one JSON blob inside
  ``<script type="application/json">`` (``<``, ``>`` and ``&`` escaped as ``\\u003c`` etc., so data
  can never close the tag) and are built client-side with DOM APIs and ``textContent`` only: text
  from the data is shown, never parsed as HTML. A Content-Security-Policy allows only the report's
  own script (by hash), so even a mistake could not run an injected one;
* images as relative links from the report's folder (``loading="lazy"``); nothing is fetched
  from the network. Images held as bytes (raw, or in a Hugging Face ``{"bytes", "path"}`` struct)
  are shown through JPEG thumbnails written once under ``{cache}/report_thumbs/``; a path-only
  struct is shown from its path.

The layout follows the pipeline kind, detected from the columns: region captions (the image with
its numbered boxes beside the answer), Img-Diff (both images with the red box of each kept box,
the two region captions, the difference caption and the per-box scores), or generic. Columns the
layout does not know are shown generically, so new operators' output renders without changes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dataflow_mm.errors import ERROR_COLUMN, UserError
from dataflow_mm.report.histogram import histograms_html
from dataflow_mm.storage.formats import SUPPORTED_TYPES, iter_table
from dataflow_mm.storage.manifest import StepManifest
from dataflow_mm.storage.media import is_image_struct

REPORT_NAME = "report.html"
DEFAULT_PAGE_SIZE = 50
MAX_TEXT_CHARS = 20_000
SAMPLE_ROWS = 2_000
MAX_REJECTS_SHOWN = 200
THUMBS_DIR = "report_thumbs"
THUMB_PIXELS = 320
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")
_STEP_RE = re.compile(r"^(?P<prefix>.+)_step(?P<step>\d+)\.(?P<ext>" + "|".join(SUPPORTED_TYPES) + r")$")


class ReportError(UserError):
    """The report cannot be written (no step files, unknown step, unreadable table)."""


# -- locating the step file --------------------------------------------------------------------
@dataclass
class StepLocation:
    """Which table the report shows, and the run it belongs to."""

    table: Path
    cache_dir: Path
    prefix: str | None = None
    step: int | None = None
    steps: dict[int, Path] = field(default_factory=dict)

    @property
    def summary_path(self) -> Path | None:
        return self.cache_dir / f"{self.prefix}_summary.json" if self.prefix else None


def _scan_steps(folder: Path) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    for path in folder.iterdir():
        match = _STEP_RE.match(path.name)
        if not match or not path.is_file():
            continue
        steps = found.setdefault(match["prefix"], {})
        index = int(match["step"])
        if index not in steps or path.stat().st_mtime > steps[index].stat().st_mtime:
            steps[index] = path
    return found


def _newest_prefix(folder: Path, found: dict[str, dict[int, Path]]) -> str:
    def recency(prefix: str) -> float:
        summary = folder / f"{prefix}_summary.json"
        if summary.is_file():
            return summary.stat().st_mtime
        return max(p.stat().st_mtime for p in found[prefix].values())

    return max(sorted(found), key=recency)


def locate_step(cache_path: str | os.PathLike, step: int | None = None, prefix: str | None = None) -> StepLocation:
    """The step file to show: ``cache_path`` is a cache folder (last step of its newest run) or a step file."""
    path = Path(cache_path)
    if path.is_file():
        match = _STEP_RE.match(path.name)
        if step is not None and (match is None or int(match["step"]) != step):
            raise ReportError(f"--step {step} cannot be used with the table file '{path}': pass its cache folder")
        if match is None:
            return StepLocation(path, path.parent)
        steps = _scan_steps(path.parent).get(match["prefix"], {})
        return StepLocation(path, path.parent, match["prefix"], int(match["step"]), steps)
    if not path.is_dir():
        raise ReportError(f"No such cache folder or step file: '{path}'")
    found = _scan_steps(path)
    if prefix is not None and prefix not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ReportError(f"No step files with prefix '{prefix}' in '{path}' (prefixes found: {known})")
    if not found:
        raise ReportError(
            f"No step files ('<prefix>_step<k>.<jsonl|json|csv|parquet>') in '{path}': has a run finished there?"
        )
    prefix = prefix or _newest_prefix(path, found)
    steps = found[prefix]
    index = max(steps) if step is None else step
    if index == 0 and 1 in steps:
        manifest = StepManifest.load(steps[1])
        if manifest and Path(manifest.input_path).is_file():
            return StepLocation(Path(manifest.input_path), path, prefix, 0, steps)
    if index not in steps:
        available = ", ".join(str(k) for k in sorted(steps))
        raise ReportError(f"Step {index} of '{prefix}' not found in '{path}' (steps available: {available})")
    return StepLocation(steps[index], path, prefix, index, steps)


# -- reading rows --------------------------------------------------------------------------------
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
        return _deep_clean(value.tolist())
    try:
        import pandas as pd

        if pd.isna(value) is True:
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _deep_clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _deep_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_clean(v) for v in value]
    if hasattr(value, "tolist"):
        return _deep_clean(value.tolist())
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


_BYTES = (bytes, bytearray, memoryview)


def _thumbnail(data: bytes, thumbs: Path) -> str | None:
    """A JPEG thumbnail of image bytes under ``thumbs`` (named from the bytes); None when they are no image."""
    from dataflow_mm.errors import RowError
    from dataflow_mm.imaging.loading import load_image
    from dataflow_mm.imaging.naming import content_name, save_image_atomic

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


def _read_rows(
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


# -- what the columns are ------------------------------------------------------------------------
def _is_image_path(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) < 4096
        and "\n" not in value
        and value.lower().endswith(IMAGE_SUFFIXES)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_boxes(value: Any) -> list[Any]:
    """A cell of boxes as a list of boxes (a single box ``[a, b, c, d]`` becomes a list of one)."""
    if not isinstance(value, list):
        return []
    if len(value) == 4 and all(_is_number(v) for v in value):
        return [value]
    return value


def _column_values(rows: list[list[Any]], index: int) -> list[Any]:
    return [row[index] for row in rows[:SAMPLE_ROWS] if row[index] is not None]


def _image_columns(columns: list[str], rows: list[list[Any]]) -> tuple[list[str], list[str]]:
    """Columns whose values are image paths, and columns whose values are lists of image paths."""
    single, lists = [], []
    for index, name in enumerate(columns):
        values = _column_values(rows, index)
        if not values:
            continue
        if all(_is_image_path(v) for v in values):
            single.append(name)
        elif all(isinstance(v, list) and all(x in (None, "") or _is_image_path(x) for x in v) for v in values) and any(
            _is_image_path(x) for v in values for x in v
        ):
            lists.append(name)
    return single, lists


def _per_box_columns(columns: list[str], rows: list[list[Any]], boxes: str, forced: list[str]) -> list[str]:
    """List columns with one entry per kept box in every row (captions, scores, per-box images...)."""
    if boxes not in columns:
        return [c for c in forced if c in columns]
    box_index = columns.index(boxes)
    counts = [len(_as_boxes(row[box_index])) if isinstance(row[box_index], list) else None for row in rows]
    found = []
    for index, name in enumerate(columns):
        if name == boxes:
            continue
        if name in forced:
            found.append(name)
            continue
        matched = seen = 0
        for row, count in zip(rows, counts, strict=True):
            value = row[index]
            if value is None or count is None:
                continue
            seen += 1
            if not isinstance(value, list) or len(value) != count:
                break
            matched += count > 0
        else:
            if seen and matched:
                found.append(name)
    return found


def _score_columns(columns: list[str], rows: list[list[Any]], per_box: list[str]) -> list[str]:
    scores = []
    for name in per_box:
        values = [x for v in _column_values(rows, columns.index(name)) for x in v if x is not None]
        if values and all(_is_number(x) for x in values):
            scores.append(name)
    return scores


def _decision_columns(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """Columns of per-candidate-box records (lists of objects with a ``kept`` flag), as Img-Diff writes."""
    found = []
    for index, name in enumerate(columns):
        values = _column_values(rows, index)
        records = [x for v in values if isinstance(v, list) for x in v]
        is_list = values and all(isinstance(v, list) for v in values)
        if is_list and records and all(isinstance(x, dict) and "kept" in x for x in records):
            found.append(name)
    return found


def _find_param(data: Any, key: str, kind: type = str) -> Any:
    if isinstance(data, dict):
        for name, value in data.items():
            if name == key and isinstance(value, kind):
                return value
            found = _find_param(value, key, kind)
            if found is not None:
                return found
    return None


def detect_layout(columns: list[str], rows: list[list[Any]], params: list[dict[str, Any]] | None = None) -> dict:
    """The pipeline kind, which column plays which role, and how to show the others."""
    have = set(columns)
    images, image_lists = _image_columns(columns, rows)
    config: dict[str, Any] = {
        "kind": "generic",
        "roles": {},
        "imageColumns": images,
        "imageListColumns": image_lists,
        "perBoxColumns": [],
        "scoreColumns": [],
        "errorColumn": ERROR_COLUMN,
        "pageSize": DEFAULT_PAGE_SIZE,
        "boxFormat": "xyxy",
    }
    if {"image_path1", "image_path2"} <= have or "bbox_difference_captions" in have:
        roles = {
            "image1": "image_path1",
            "image2": "image_path2",
            "boxes": next((c for c in ("bboxes", "bbox", "boxes") if c in have), "bboxes"),
            "caption1": "region_caption1",
            "caption2": "region_caption2",
            "diff": "bbox_difference_captions",
        }
        roles = {role: name for role, name in roles.items() if name in have}
        decisions = _decision_columns(columns, rows)
        if decisions:
            roles["decisions"] = "bbox_decisions" if "bbox_decisions" in decisions else decisions[0]
        forced = [roles[r] for r in ("caption1", "caption2", "diff") if r in roles]
        per_box = [c for c in _per_box_columns(columns, rows, roles.get("boxes", ""), forced) if c not in decisions]
        fmt = next(filter(None, (_find_param(p, "bbox_format") for p in params or [])), None)
        normalized = next((v for p in params or [] if (v := _find_param(p, "normalized", bool)) is not None), None)
        config.update(
            kind="imgdiff",
            roles=roles,
            perBoxColumns=per_box,
            scoreColumns=_score_columns(columns, rows, [c for c in per_box if c not in forced]),
            boxFormat=fmt if fmt in ("xyxy", "xywh", "cxcywh") else "xyxy",
            boxNormalized=normalized,
        )
    elif "image_with_bbox" in have or ("answer" in have and images):
        roles = {
            "image": "image_with_bbox" if "image_with_bbox" in have else images[0],
            "original": "image",
            "boxes": "bbox",
            "normalizedBoxes": "normalized_bbox",
            "answer": "answer",
            "prompt": "prompt",
            "dropped": "bbox_dropped",
        }
        config.update(kind="region_caption", roles={role: name for role, name in roles.items() if name in have})
    return config


# -- links to images -----------------------------------------------------------------------------
def _link(value: str, roots: list[Path], report_dir: str) -> str | None:
    """A URL to the image relative to the report's folder (None when the file is not there)."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~user" of an unknown user
        path = Path(value)
    for candidate in [path] if path.is_absolute() else [root / path for root in roots]:
        try:
            found = candidate.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte
            found = False
        if found:
            target = os.path.abspath(candidate)
            try:
                return quote(os.path.relpath(target, report_dir).replace(os.sep, "/"))
            except ValueError:  # another drive (Windows): an absolute file URL
                return Path(target).as_uri()
    return None


def _run_folder(location: StepLocation, manifests: dict[int, StepManifest], summary: dict | None) -> Path | None:
    """The working folder of the run, when the run recorded its step files by relative paths.

    A manifest records ``cache/x/p_step2.jsonl``; the file is now ``/home/u/ws/cache/x/p_step2.jsonl``:
    the run worked in ``/home/u/ws``, so its other relative paths (images) are relative to that.
    """
    recorded = [str(m.stats.get("output_path") or "") for m in manifests.values() if m.stats]
    recorded.append(str((summary or {}).get("output_path") or ""))
    for path_text in recorded:
        if not path_text or os.path.isabs(path_text):
            continue
        parts = Path(os.path.normpath(path_text)).parts
        if ".." in parts:
            continue
        actual = Path(os.path.abspath(location.cache_dir / parts[-1])).parts
        if len(actual) > len(parts) and actual[-len(parts) :] == parts:
            return Path(*actual[: -len(parts)])
    return None


def _media_roots(
    location: StepLocation, manifests: dict[int, StepManifest], summary: dict | None, target: Path
) -> list[Path]:
    """Folders against which relative image paths are tried, in order."""
    roots = [Path.cwd()]
    run_folder = _run_folder(location, manifests, summary)
    if run_folder is not None:
        roots.append(run_folder)
    first = manifests.get(min(manifests)) if manifests else None
    if first is not None:
        source = Path(first.input_path)
        if not source.is_absolute() and run_folder is not None:
            source = run_folder / source
        roots.append(source.resolve().parent)
    roots += [location.cache_dir.resolve(), target.resolve().parent]
    return list(dict.fromkeys(roots))


def _image_links(
    columns: list[str], rows: list[list[Any]], config: dict[str, Any], roots: list[Path], report_dir: Path
) -> dict[str, str | None]:
    """Original path -> relative URL (None: not found) for every image the page may show.

    Columns in an image role link any path (whatever its extension); other columns only image paths.
    """
    roles = config["roles"]
    role_names = {roles[r] for r in ("image", "original", "image1", "image2") if r in roles}
    names = {*config["imageColumns"], *config["imageListColumns"], *role_names}
    indexes = [(columns.index(c), c in role_names) for c in columns if c in names]
    links: dict[str, str | None] = {}
    base = os.path.abspath(report_dir)
    for row in rows:
        for index, any_path in indexes:
            value = row[index]
            for item in value if isinstance(value, list) else [value]:
                if not isinstance(item, str) or item in links or not (_is_image_path(item) or (any_path and item)):
                    continue
                links[item] = _link(item, roots, base)
    return links


# -- the header ------------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True, default=str)


def _load_json(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _servings(summary: dict[str, Any] | None, manifests: dict[int, StepManifest]) -> list[dict[str, Any]]:
    if summary and summary.get("servings"):
        return [s for s in summary["servings"] if isinstance(s, dict)]
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for manifest in manifests.values():
        prov = manifest.provenance or {}
        if prov.get("model") or prov.get("backend"):
            seen.setdefault((str(prov.get("backend")), str(prov.get("model"))), prov)
    return list(seen.values())


def _counts(summary: dict[str, Any] | None, manifests: dict[int, StepManifest]) -> dict[str, Any]:
    if summary:
        return {k: summary.get(k) for k in ("rows_in", "rows_out", "rows_rejected", "rows_with_error", "row_errors")}
    stats = [m.stats for _, m in sorted(manifests.items()) if m.stats]
    if not stats:
        return {}
    errors = stats[-1].get("row_errors") or {}
    return {
        "rows_in": stats[0].get("rows_in"),
        "rows_out": stats[-1].get("rows_out"),
        "rows_rejected": sum(int(s.get("rows_rejected") or 0) for s in stats),
        "rows_with_error": sum(errors.values()),
        "row_errors": errors,
    }


def _steps_table(summary: dict[str, Any] | None, manifests: dict[int, StepManifest], shown: int | None) -> str:
    steps = (summary or {}).get("steps") or [m.stats for _, m in sorted(manifests.items()) if m.stats]
    if not steps:
        return ""
    head = "<tr><th>step</th><th>operator</th><th>in</th><th>out</th><th>rejected</th><th>errors</th><th>s</th></tr>"
    body = []
    for step in steps:
        errors = ", ".join(f"{k} ×{v}" for k, v in sorted((step.get("row_errors") or {}).items()))
        rejected = ", ".join(f"{k} ×{v}" for k, v in sorted((step.get("rejected") or {}).items()))
        mark = ' class="shown"' if step.get("step") == shown else ""
        skipped = " (skipped: already complete)" if step.get("skipped") else ""
        body.append(
            f"<tr{mark}><td>{_esc(step.get('step'))}</td><td>{_esc(step.get('operator'))}{skipped}</td>"
            f"<td>{_esc(step.get('rows_in'))}</td><td>{_esc(step.get('rows_out'))}</td>"
            f"<td>{_esc(step.get('rows_rejected'))}{' (' + _esc(rejected) + ')' if rejected else ''}</td>"
            f"<td>{_esc(errors) or '0'}</td><td>{_esc(step.get('seconds'))}</td></tr>"
        )
    return f'<table class="steps">{head}{"".join(body)}</table>'


def _rejects_section(location: StepLocation) -> str:
    items = []
    total = 0
    for index, step_file in sorted(location.steps.items()):
        path = Path(f"{step_file}.rejects.jsonl")
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            total += 1
            if len(items) < MAX_REJECTS_SHOWN:
                items.append(
                    f"<li>step {index}, line {_esc(record.get('line'))}: <b>{_esc(record.get('cause'))}</b> "
                    f"{_esc(record.get('message'))}<pre>{_esc(record.get('raw', ''))}</pre></li>"
                )
    if not total:
        return ""
    more = f"<p>… and {total - len(items)} more</p>" if total > len(items) else ""
    summary = f"<summary>Rejected records ({total})</summary>"
    return f'<details class="rejects">{summary}<ul>{"".join(items)}</ul>{more}</details>'


def _header_html(
    location: StepLocation,
    summary: dict[str, Any] | None,
    manifests: dict[int, StepManifest],
    kind: str,
    shown_rows: int,
    total_rows: int,
) -> str:
    kind_names = {"region_caption": "region captions", "imgdiff": "Img-Diff", "generic": "rows"}
    title = f"{location.prefix} · step {location.step}" if location.prefix else location.table.name
    manifest = manifests.get(location.step or -1)
    operator = f" ({manifest.operator})" if manifest else ""
    parts = [
        f'<h1>dataflow-mm report <span class="kind">{_esc(kind_names[kind])}</span></h1>',
        f'<p class="meta">{_esc(title)}{_esc(operator)} · <code>{_esc(location.table)}</code> · generated '
        f"{_esc(_dt.datetime.now().isoformat(timespec='seconds'))}</p>",
    ]
    counts = _counts(summary, manifests)
    stat_cells = []
    for key, label in (
        ("rows_in", "rows in"),
        ("rows_out", "rows out"),
        ("rows_rejected", "rejected"),
        ("rows_with_error", "with error"),
    ):
        if counts.get(key) is not None:
            stat_cells.append(f'<div class="stat" data-stat="{key}"><b>{_esc(counts[key])}</b> {label}</div>')
    causes = counts.get("row_errors") or {}
    if causes:
        text = ", ".join(f"{k} ×{v}" for k, v in sorted(causes.items()))
        stat_cells.append(f'<div class="stat causes">errors: {_esc(text)}</div>')
    if stat_cells:
        parts.append(f'<div class="stats">{"".join(stat_cells)}</div>')
    elif not summary:
        parts.append('<p class="note">No run summary or manifest found: only the rows are shown.</p>')
    parts.append(histograms_html(summary, [m.stats for _, m in sorted(manifests.items()) if m.stats]))
    servings = _servings(summary, manifests)
    if servings:
        rows = []
        for serving in servings:
            sampling = serving.get("sampling") or {}
            params = ", ".join(f"{k}={v}" for k, v in sampling.items()) if isinstance(sampling, dict) else sampling
            stats = serving.get("stats") or {}
            usage = (
                f"{stats.get('requests')} requests, {stats.get('failed')} failed, "
                f"{stats.get('prompt_tokens')}+{stats.get('completion_tokens')} tokens"
                if stats
                else ""
            )
            rows.append(
                f'<tr><td class="model">{_esc(serving.get("model"))}</td><td class="backend">'
                f"{_esc(serving.get('backend'))}</td><td>{_esc(params)}</td><td>{_esc(usage)}</td></tr>"
            )
        parts.append(
            '<table class="servings"><tr><th>model</th><th>backend</th><th>sampling</th><th>usage</th></tr>'
            + "".join(rows)
            + "</table>"
        )
    if (summary or {}).get("smoke_test_model") or any(s.get("smoke_test_model") for s in servings):
        parts.append(
            '<p class="warn">The model is a tiny random-weight smoke-test model: its answers are meaningless.</p>'
        )
    steps = _steps_table(summary, manifests, location.step)
    if steps:
        parts.append(f'<details class="steps-box" open><summary>Steps</summary>{steps}</details>')
    params = "".join(
        f"<h3>step {k}: {_esc(m.operator)}</h3><pre>{_esc(_json_text(m.params))}</pre>"
        for k, m in sorted(manifests.items())
    )
    if params:
        parts.append(f'<details class="params"><summary>Operator parameters</summary>{params}</details>')
    parts.append(_rejects_section(location))
    if shown_rows < total_rows:
        parts.append(
            f'<p class="note limit">Showing the first {shown_rows} of {total_rows} rows: '
            f"<code>dataflowmm report</code> without <code>--limit</code> shows them all.</p>"
        )
    return "\n".join(p for p in parts if p)


# -- the page ------------------------------------------------------------------------------------
def _json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` at all."""
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        text = json.dumps(_deep_clean(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; img-src 'self' file: data: blob:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


def build_report_html(
    cache_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    step: int | None = None,
    limit: int | None = None,
    *,
    prefix: str | None = None,
) -> tuple[str, Path]:
    """The report's HTML text and the path it is meant for (image links are relative to its folder)."""
    if limit is not None and limit < 0:
        raise ReportError(f"--limit must be 0 or more, not {limit}")
    location = locate_step(cache_path, step, prefix)
    target = Path(out) if out is not None else location.cache_dir / REPORT_NAME
    if target.is_dir():
        target = target / REPORT_NAME
    manifests = {k: m for k, p in location.steps.items() if (m := StepManifest.load(p)) is not None}
    summary = _load_json(location.summary_path)
    shown = manifests.get(location.step) if location.step is not None else None
    known_total = shown.stats.get("rows_out") if shown and isinstance(shown.stats.get("rows_out"), int) else None
    columns, rows, total = _read_rows(location.table, limit, known_total, location.cache_dir / THUMBS_DIR)
    config = detect_layout(columns, rows, [m.params for m in manifests.values()])
    roots = _media_roots(location, manifests, summary, target)
    links = _image_links(columns, rows, config, roots, target.resolve().parent)
    payload = {"columns": columns, "rows": rows, "config": config, "urls": links, "total": total}
    header = _header_html(location, summary, manifests, config["kind"], len(rows), total)
    title = f"dataflow-mm report: {location.prefix or location.table.name}"
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(_csp(_SCRIPT))}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style></head>\n"
        f'<body data-kind="{_esc(config["kind"])}">\n<header id="summary">\n{header}\n</header>\n'
        '<nav id="toolbar">'
        '<input id="search" type="search" placeholder="Search all rows (every word must match)" autocomplete="off">'
        '<label><input id="errors-only" type="checkbox"> only rows with an error</label>'
        '<label>per page <select id="page-size"><option>10</option><option>25</option>'
        "<option selected>50</option><option>100</option><option>200</option></select></label>"
        '<span id="count"></span>'
        '<span class="pager"><button type="button" class="prev">‹ prev</button>'
        '<span class="page-info"></span><button type="button" class="next">next ›</button></span>'
        "</nav>\n"
        '<main id="rows"></main>\n'
        '<nav class="pager bottom"><button type="button" class="prev">‹ prev</button>'
        '<span class="page-info"></span><button type="button" class="next">next ›</button></nav>\n'
        "<noscript><p>The rows are rendered with JavaScript; enable it to see them.</p></noscript>\n"
        f'<script type="application/json" id="report-data">{_json_for_script(payload)}</script>\n'
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )
    return page, target


def write_report(
    cache_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    step: int | None = None,
    limit: int | None = None,
    *,
    prefix: str | None = None,
) -> Path:
    """Write the HTML report of a cache folder's run (default: last step, ``{cache_path}/report.html``).

    ``cache_path`` may also be one step file. ``step`` picks another step; ``limit`` keeps the first
    rows only; ``prefix`` picks a run when the folder holds several (default: the newest).
    """
    from dataflow_mm.storage.atomic import write_bytes_atomic

    page, target = build_report_html(cache_path, out, step, limit, prefix=prefix)
    write_bytes_atomic(page.encode("utf-8"), target)
    return target


RUN_REPORT_ROWS = 1_000  # a glance that costs the same at any table size; `dataflowmm report` shows all
NO_REPORT_ENV = "DATAFLOW_MM_NO_REPORT"


def report_after_run(storage: Any, limit: int | None = RUN_REPORT_ROWS) -> Path | None:
    """Write the report of the run that just finished on ``storage`` and print its path; never raises.

    Called at the end of ``PipelineABC.run`` (the last call's storage). Does nothing for ``None``
    or when ``DATAFLOW_MM_NO_REPORT=1``. At most ``limit`` rows go in (``dataflowmm report`` shows all).
    """
    if storage is None or os.environ.get(NO_REPORT_ENV, "").strip() not in ("", "0"):
        return None
    try:
        path = write_report(storage.cache_path, limit=limit, prefix=storage.file_name_prefix)
    except Exception as exc:  # the run itself succeeded: a report problem must not fail it
        print(f"report: not written ({type(exc).__name__}: {exc})", flush=True)
        return None
    print(f"report: {path}", flush=True)
    return path


_STYLE = """
:root { --fg: #1d2330; --muted: #667085; --line: #dfe3ea; --bg: #f6f7f9; --card: #fff; --accent: #2657d6; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); }
header { padding: 16px 24px 8px; background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 20px; margin: 0 0 4px; } h3 { font-size: 13px; margin: 10px 0 4px; }
.kind { font-size: 13px; font-weight: 600; color: #fff; background: var(--accent); border-radius: 10px;
  padding: 2px 10px; vertical-align: middle; }
.meta, .note { color: var(--muted); margin: 4px 0; } code { font-size: 12px; }
.stats { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0; }
.stat { border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; background: var(--bg); }
.stat b { font-size: 16px; } .stat.causes { color: #b42318; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); } tr.shown td { background: #eef3ff; }
details { margin: 6px 0; } summary { cursor: pointer; color: var(--accent); }
pre { white-space: pre-wrap; word-break: break-word; margin: 2px 0; font-size: 12px; }
.warn { color: #b54708; background: #fffaeb; border: 1px solid #fedf89; padding: 6px 10px; border-radius: 6px; }
#toolbar { position: sticky; top: 0; z-index: 5; display: flex; flex-wrap: wrap; gap: 12px; align-items: center;
  padding: 8px 24px; background: #fbfcfe; border-bottom: 1px solid var(--line); }
#search { flex: 1 1 320px; padding: 6px 10px; font-size: 14px; border: 1px solid #c5cbd6; border-radius: 6px; }
#count { color: var(--muted); } .pager { display: inline-flex; gap: 8px; align-items: center; }
.pager.bottom { display: flex; justify-content: center; padding: 12px; }
button { padding: 4px 10px; border: 1px solid #c5cbd6; border-radius: 6px; background: #fff; cursor: pointer; }
button:disabled { opacity: .4; cursor: default; }
#rows { padding: 12px 24px; display: flex; flex-direction: column; gap: 12px; }
.row-card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.row-card.has-error { border-left: 4px solid #d92d20; }
.row-head { display: flex; flex-wrap: wrap; gap: 6px; align-items: baseline; margin-bottom: 6px; }
.row-no { font-weight: 700; margin-right: 6px; }
.chip { font-size: 12px; background: var(--bg); border: 1px solid var(--line); border-radius: 10px; padding: 0 8px; }
.chip b { font-weight: 600; color: var(--muted); margin-right: 4px; }
.error { color: #b42318; background: #fef3f2; border: 1px solid #fecdca; border-radius: 6px; padding: 4px 8px;
  margin: 4px 0; white-space: pre-wrap; word-break: break-word; }
.rc-body { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }
.side { flex: 1 1 320px; min-width: 0; }
.label { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin-top: 6px; }
.text { white-space: pre-wrap; word-break: break-word; }
.answer { white-space: pre-wrap; word-break: break-word; font-size: 14px; }
.prompt { color: var(--muted); font-size: 12px; white-space: pre-wrap; }
ol.boxes { margin: 2px 0; padding-left: 24px; font: 12px ui-monospace, monospace; }
.fig { position: relative; display: inline-block; line-height: 0; background: #e9ecf1; }
.fig img { display: block; max-width: 420px; max-height: 340px; width: auto; height: auto; }
.fig.small img { max-width: 300px; max-height: 240px; }
.fig.thumb img { max-width: 160px; max-height: 120px; }
.fig.panel img { max-width: 640px; max-height: 240px; }
.missing { line-height: 1.3; padding: 24px 12px; color: #b42318; font-size: 12px; max-width: 300px;
  word-break: break-all; }
.bx { position: absolute; border: 2px solid #12b76a; pointer-events: none; }
.bx.red { border: 3px solid #f00; box-shadow: 0 0 0 1px #fff; }
.bx span { position: absolute; top: -1px; left: -1px; line-height: 1.2; font: 700 11px sans-serif; color: #fff;
  background: #12b76a; padding: 0 3px; }
.dropped ul { margin: 4px 0; padding-left: 20px; font-size: 12px; } .dropped .scores { margin: 2px 0 4px; }
.diff-box { border-top: 1px dashed var(--line); padding-top: 8px; margin-top: 8px; }
.box-title { font-weight: 600; font-size: 13px; }
.pair { display: flex; flex-wrap: wrap; gap: 16px; }
.pair-col { flex: 0 1 300px; min-width: 0; }
.diff-caption { white-space: pre-wrap; word-break: break-word; background: #fffaeb; border-radius: 6px;
  padding: 4px 8px; }
.scores { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.score { font: 12px ui-monospace, monospace; border: 1px solid var(--line); border-radius: 10px; padding: 0 8px; }
.kv { display: grid; grid-template-columns: minmax(100px, max-content) 1fr; gap: 2px 12px; font-size: 12px; }
.kv > .k { color: var(--muted); } .kv > .v { white-space: pre-wrap; word-break: break-word; min-width: 0; }
.kv > .fig, .kv > .thumbs { justify-self: start; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; }
.empty { color: var(--muted); padding: 24px; text-align: center; }
"""

_SCRIPT = r"""
(() => {
  "use strict";
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const COLS = DATA.columns, ROWS = DATA.rows, CFG = DATA.config, URLS = DATA.urls;
  const ROLES = CFG.roles || {};
  const IDX = new Map(COLS.map((c, i) => [c, i]));
  const MAX_BOXES = 20;
  const get = (row, name) => (name != null && IDX.has(name) ? row[IDX.get(name)] : null);
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  };
  const fmtNum = (v) => (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4))));
  const fmt = (v) => {
    if (v == null) return "—";
    if (typeof v === "string") return v;
    if (isNum(v)) return fmtNum(v);
    if (Array.isArray(v) && v.length && v.every(isNum)) return "[" + v.map(fmtNum).join(", ") + "]";
    return JSON.stringify(v);
  };
  const short = (v, n) => { const s = fmt(v); return s.length > n ? s.slice(0, n) + "…" : s; };
  const asList = (v) => (Array.isArray(v) ? v : v == null ? [] : [v]);
  const asBoxes = (v) => {
    if (!Array.isArray(v)) return [];
    if (v.length === 4 && v.every(isNum)) return [v];
    return v.map((b) => (Array.isArray(b) && b.length >= 4 && b.slice(0, 4).every(isNum) ? b : null));
  };
  const isZeroBox = (b) => !b || b.slice(0, 4).every((v) => v === 0);
  const isImage = (v) => typeof v === "string" && Object.prototype.hasOwnProperty.call(URLS, v);
  const errorOf = (row) => { const e = get(row, CFG.errorColumn); return e == null || e === "" ? null : e; };

  // a box as [x1, y1, x2, y2] in pixels of a w x h frame, or null; normalized: true, false or null (guess)
  function toRect(box, format, w, h, normalized) {
    let [a, b, c, d] = box.slice(0, 4).map(Number);
    const fractions = [a, b, c, d].every((v) => v >= 0 && v <= 1.0) && (c > 0 || d > 0);
    if (normalized === true || (normalized == null && fractions)) { a *= w; c *= w; b *= h; d *= h; }
    let r;
    if (format === "xywh") r = [a, b, a + c, b + d];
    else if (format === "cxcywh") r = [a - c / 2, b - d / 2, a + c / 2, b + d / 2];
    else r = c > a && d > b ? [a, b, c, d] : [a, b, a + c, b + d];
    r = [Math.max(0, r[0]), Math.max(0, r[1]), Math.min(w, r[2]), Math.min(h, r[3])];
    return r[2] > r[0] && r[3] > r[1] ? r : null;
  }

  // overlays in a w x h pixel frame, placed in percent so they follow the image's displayed size
  function drawBoxes(fig, w, h, overlays) {
    if (!w || !h) return;
    for (const o of overlays) {
      const r = toRect(o.box, o.format, w, h, o.normalized);
      if (!r) continue;
      const d = el("div", "bx" + (o.red ? " red" : ""));
      d.style.left = (100 * r[0] / w) + "%";
      d.style.top = (100 * r[1] / h) + "%";
      d.style.width = (100 * (r[2] - r[0]) / w) + "%";
      d.style.height = (100 * (r[3] - r[1]) / h) + "%";
      if (o.label != null) d.append(el("span", null, o.label));
      fig.append(d);
    }
  }

  function figure(path, overlays, size) {
    const fig = el("div", "fig" + (size ? " " + size : ""));
    if (typeof path !== "string" || !path) { fig.append(el("div", "missing", "no image")); return fig; }
    const url = URLS[path];
    if (!url) {
      fig.classList.add("broken");
      fig.append(el("div", "missing", "image not found: " + path));
      return fig;
    }
    const link = el("a");
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener";
    const img = el("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = path;
    img.title = path;
    if (overlays && overlays.length) {
      img.addEventListener("load", () => drawBoxes(fig, img.naturalWidth, img.naturalHeight, overlays));
    }
    img.addEventListener("error", () => {
      fig.classList.add("broken");
      fig.replaceChildren(el("div", "missing", "image failed to load: " + path));
    });
    img.src = url;
    link.append(img);
    fig.append(link);
    return fig;
  }

  function value(v, size) {
    if (isImage(v)) return figure(v, [], size || "thumb");
    if (Array.isArray(v) && v.length && v.every(isImage)) {
      const t = el("div", "thumbs");
      v.forEach((p) => t.append(figure(p, [], "thumb")));
      return t;
    }
    return el("div", "v", short(v, 4000));
  }

  function kvTable(row, names) {
    const kv = el("div", "kv");
    for (const name of names) {
      kv.append(el("div", "k", name));
      const v = value(get(row, name));
      v.classList.add("v");
      kv.append(v);
    }
    return kv;
  }

  function allFields(row) {
    const det = el("details", "fields");
    det.append(el("summary", null, "all fields (" + COLS.length + ")"));
    det.addEventListener("toggle", () => {
      if (det.open && det.childElementCount === 1) det.append(kvTable(row, COLS));
    });
    return det;
  }

  const SHOWN = new Set([...Object.values(ROLES), ...(CFG.perBoxColumns || []), CFG.errorColumn]);

  function baseCard(row, i) {
    const error = errorOf(row);
    const card = el("article", "row-card" + (error ? " has-error" : ""));
    card.dataset.row = String(i);
    const head = el("div", "row-head");
    head.append(el("span", "row-no", "#" + (i + 1)));
    let chips = 0;
    for (const name of COLS) {
      if (SHOWN.has(name) || chips >= 8) continue;
      const v = get(row, name);
      const shortText = typeof v === "string" && v.length <= 40 && !/[\\/]/.test(v);  // not a path
      if (!(isNum(v) || typeof v === "boolean" || shortText)) continue;
      const chip = el("span", "chip");
      chip.append(el("b", null, name), document.createTextNode(fmt(v)));
      head.append(chip);
      chips++;
    }
    card.append(head);
    if (error) card.append(el("div", "error", "error: " + error));
    return card;
  }

  function regionCard(row, i) {
    const card = baseCard(row, i);
    const body = el("div", "rc-body");
    let path = get(row, ROLES.image);
    let overlays = [];
    if (!path && ROLES.original) {
      path = get(row, ROLES.original);
      asBoxes(get(row, ROLES.normalizedBoxes)).forEach((b, k) => {
        if (b && !isZeroBox(b)) overlays.push({ box: b, label: k + 1, format: "xyxy", normalized: true });
      });
    }
    if (path || !errorOf(row)) body.append(figure(path, overlays));
    const side = el("div", "side");
    side.append(el("div", "label", "Answer"), el("div", "answer", fmt(get(row, ROLES.answer))));
    const boxes = asBoxes(get(row, ROLES.boxes));
    if (boxes.length) {
      side.append(el("div", "label", "Boxes (" + boxes.length + ")"));
      const ol = el("ol", "boxes");
      boxes.forEach((b) => ol.append(el("li", null, fmt(b))));
      side.append(ol);
    }
    const dropped = get(row, ROLES.dropped);
    if (Array.isArray(dropped) && dropped.length) {
      side.append(el("div", "label", "Dropped boxes"), el("div", "text", dropped.map(fmt).join("\n")));
    }
    const prompt = get(row, ROLES.prompt);
    if (prompt != null) side.append(el("div", "label", "Prompt"), el("div", "prompt", fmt(prompt)));
    body.append(side);
    card.append(body, allFields(row));
    return card;
  }

  const loaded = (img) => new Promise((done) => {
    if (img.complete && img.naturalWidth) done();
    else img.addEventListener("load", done, { once: true });
  });

  // Img-Diff addresses both images in image 1's pixels (image 2 is resized to image 1's size)
  function pairFigures(p1, p2, overlay) {
    const f1 = figure(p1, [], "small"), f2 = figure(p2, [], "small");
    const i1 = f1.querySelector("img"), i2 = f2.querySelector("img");
    if (!overlay.length) return [f1, f2];
    const frame = i1 ? loaded(i1).then(() => [i1.naturalWidth, i1.naturalHeight])
      : i2 ? loaded(i2).then(() => [i2.naturalWidth, i2.naturalHeight]) : null;
    if (frame) {
      if (i1) frame.then(([w, h]) => drawBoxes(f1, w, h, overlay));
      if (i2) Promise.all([frame, loaded(i2)]).then(([[w, h]]) => drawBoxes(f2, w, h, overlay));
    }
    return [f1, f2];
  }

  const SKIP_FIELDS = new Set(["index", "kept", "dropped_at", "drop_reason", "bbox", "bbox_xyxy"]);

  function scoreChips(names) {
    const chips = el("div", "scores");
    for (const [name, v] of names) chips.append(el("span", "score", name + " " + fmt(v)));
    return chips;
  }

  function diffCard(row, i) {
    const card = baseCard(row, i);
    let boxes = asBoxes(get(row, ROLES.boxes));
    const cap1 = asList(get(row, ROLES.caption1)), cap2 = asList(get(row, ROLES.caption2));
    const diffs = asList(get(row, ROLES.diff));
    const p1 = get(row, ROLES.image1), p2 = get(row, ROLES.image2);
    const decisions = asList(get(row, ROLES.decisions)).filter((d) => d && typeof d === "object");
    const kept = decisions.filter((d) => d.kept);
    const perBox = (CFG.perBoxColumns || []).filter((c) => ![ROLES.caption1, ROLES.caption2, ROLES.diff].includes(c));
    const scores = new Set(CFG.scoreColumns || []);
    let n = Math.max(boxes.length, cap1.length, cap2.length, diffs.length);
    // the seed's "nothing kept" result: one zero box with empty captions
    if (boxes.every(isZeroBox) && diffs.every((d) => !d) && !kept.length) n = 0;
    const records = kept.length === n ? kept : [];
    if (n === 0) {
      if (p1 || p2) {
        const pair = el("div", "pair");
        pair.append(...pairFigures(p1, p2, []));
        card.append(pair);
      }
      card.append(el("div", "label", "no kept boxes"));
    }
    for (let k = 0; k < Math.min(n, MAX_BOXES); k++) {
      const box = boxes[k], record = records[k];
      const sec = el("section", "diff-box");
      sec.dataset.box = String(k);
      sec.append(el("div", "box-title", "Box " + (k + 1) + (box ? "  " + fmt(box) : "")));
      let overlay = [];
      if (record && Array.isArray(record.bbox_xyxy) && !isZeroBox(record.bbox_xyxy)) {
        overlay = [{ box: record.bbox_xyxy, format: "xyxy", normalized: false, red: true }];
      } else if (box && !isZeroBox(box)) {
        overlay = [{ box: box, format: CFG.boxFormat, normalized: CFG.boxNormalized, red: true }];
      }
      const figs = pairFigures(p1, p2, overlay);
      const pair = el("div", "pair");
      [[figs[0], cap1[k], "Region caption 1"], [figs[1], cap2[k], "Region caption 2"]].forEach(([f, c, label]) => {
        const col = el("div", "pair-col");
        col.append(f, el("div", "label", label), el("div", "text caption", fmt(c)));
        pair.append(col);
      });
      sec.append(pair, el("div", "label", "Difference caption"), el("div", "diff-caption", fmt(diffs[k])));
      const chips = [], rest = [];
      if (record) {
        for (const [name, v] of Object.entries(record)) if (!SKIP_FIELDS.has(name) && isNum(v)) chips.push([name, v]);
      }
      for (const name of perBox) {
        const v = asList(get(row, name))[k];
        if (scores.has(name)) chips.push([name, v]);
        else rest.push(name);
      }
      if (chips.length) sec.append(scoreChips(chips));
      if (rest.length) {
        const kv = el("div", "kv");
        for (const name of rest) {
          kv.append(el("div", "k", name));
          const v = value(asList(get(row, name))[k], "panel");
          v.classList.add("v");
          kv.append(v);
        }
        sec.append(kv);
      }
      card.append(sec);
    }
    if (n > MAX_BOXES) card.append(el("div", "label", (n - MAX_BOXES) + " more boxes not shown"));
    const dropped = decisions.filter((d) => !d.kept);
    if (dropped.length) {
      const det = el("details", "dropped");
      det.append(el("summary", null, "dropped candidate boxes (" + dropped.length + ")"));
      const ul = el("ul");
      for (const d of dropped) {
        const li = el("li", null, fmt(d.bbox) + " dropped at " + fmt(d.dropped_at) + ": " + fmt(d.drop_reason));
        const nums = Object.entries(d).filter(([name, v]) => !SKIP_FIELDS.has(name) && isNum(v));
        if (nums.length) li.append(scoreChips(nums));
        ul.append(li);
      }
      det.append(ul);
      card.append(det);
    }
    card.append(allFields(row));
    return card;
  }

  function genericCard(row, i) {
    const card = baseCard(row, i);
    const images = [...(CFG.imageColumns || []), ...(CFG.imageListColumns || [])];
    if (images.length) {
      const t = el("div", "thumbs");
      for (const name of images) asList(get(row, name)).forEach((p) => t.append(figure(p, [], "small")));
      card.append(t);
    }
    card.append(kvTable(row, COLS.filter((c) => !images.includes(c) && c !== CFG.errorColumn)));
    return card;
  }

  const makeCard = { region_caption: regionCard, imgdiff: diffCard }[CFG.kind] || genericCard;

  // -- filtering and paging ------------------------------------------------------------------
  const rowsEl = document.getElementById("rows");
  const search = document.getElementById("search");
  const errorsOnly = document.getElementById("errors-only");
  const pageSizeEl = document.getElementById("page-size");
  const countEl = document.getElementById("count");
  const all = ROWS.map((_, i) => i);
  let filtered = all, page = 0, pageSize = CFG.pageSize || 50, haystack = null;

  function textOf(row) {
    let s = "";
    for (const v of row) if (v != null) s += (typeof v === "string" ? v : JSON.stringify(v)) + "\n";
    return s.toLowerCase();
  }

  function applyFilter() {
    const terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const onlyErrors = errorsOnly.checked;
    if (!terms.length && !onlyErrors) filtered = all;
    else {
      if (terms.length && !haystack) haystack = ROWS.map(textOf);
      filtered = all.filter((i) => (!onlyErrors || errorOf(ROWS[i]))
        && terms.every((t) => haystack[i].includes(t)));
    }
    page = 0;
    render();
  }

  function render() {
    const pages = Math.max(1, Math.ceil(filtered.length / pageSize));
    page = Math.min(Math.max(0, page), pages - 1);
    const start = page * pageSize, end = Math.min(filtered.length, start + pageSize);
    const frag = document.createDocumentFragment();
    for (let j = start; j < end; j++) frag.append(makeCard(ROWS[filtered[j]], filtered[j]));
    if (!filtered.length) frag.append(el("div", "empty", "No rows match."));
    rowsEl.replaceChildren(frag);
    const totalNote = DATA.total > ROWS.length ? " (first " + ROWS.length + " of " + DATA.total + " in the file)" : "";
    countEl.textContent = (filtered.length === ROWS.length ? ROWS.length + " rows"
      : filtered.length + " of " + ROWS.length + " rows match") + totalNote;
    const info = filtered.length ? "rows " + (start + 1) + "–" + end + " · page " + (page + 1) + " of " + pages : "";
    document.querySelectorAll(".page-info").forEach((e) => { e.textContent = info; });
    document.querySelectorAll("button.prev").forEach((b) => { b.disabled = page === 0; });
    document.querySelectorAll("button.next").forEach((b) => { b.disabled = page >= pages - 1; });
    window.__reportState = { query: search.value, errorsOnly: errorsOnly.checked, matches: filtered.length, page };
  }

  let timer = null;
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(applyFilter, 120); });
  errorsOnly.addEventListener("change", applyFilter);
  pageSizeEl.value = String(pageSize);
  pageSizeEl.addEventListener("change", () => { pageSize = Number(pageSizeEl.value) || 50; page = 0; render(); });
  const go = (delta, top) => { page += delta; render(); if (top) rowsEl.scrollIntoView(); };
  document.querySelectorAll("button.prev").forEach((b) => b.addEventListener("click", () => go(-1, true)));
  document.querySelectorAll("button.next").forEach((b) => b.addEventListener("click", () => go(1, true)));
  render();
  window.__reportReady = { ms: performance.now(), rows: ROWS.length };
})();
"""
