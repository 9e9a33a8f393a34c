"""Which page layout a table gets and which column plays which role, from the operators' declarations.

The layouts are the report's (``imgdiff``, ``region_caption``, else generic); the column names come from
the operators' ``report_view`` (``dataflow_mm.core.report_view``), read through the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dataflow_mm.common.errors import ERROR_COLUMN
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.core.report_view import ReportView

DEFAULT_PAGE_SIZE = 50
SAMPLE_ROWS = 2_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")


def is_image_path(value: Any) -> bool:
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
        if all(is_image_path(v) for v in values):
            single.append(name)
        elif all(isinstance(v, list) and all(x in (None, "") or is_image_path(x) for x in v) for v in values) and any(
            is_image_path(x) for v in values for x in v
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


LAYOUTS = ("imgdiff", "region_caption")  # the page layouts, most specific first


def _merged_roles(views: Sequence[ReportView], layout: str) -> dict[str, tuple[str, ...]]:
    """Role -> candidate columns of every view of ``layout``, in declaration order (the first present wins)."""
    roles: dict[str, tuple[str, ...]] = {}
    for view in views:
        if view.layout == layout:
            for role in view.roles:
                roles[role] = tuple(dict.fromkeys(roles.get(role, ()) + view.candidates(role)))
    return roles


def _identified(views: Sequence[ReportView], layout: str, have: set[str]) -> bool:
    return any(set(columns) <= have for view in views if view.layout == layout for columns in view.identifies)


def _present(roles: dict[str, tuple[str, ...]], have: set[str]) -> dict[str, str]:
    """Each role's first candidate column that the table has (roles without one left out)."""
    return {role: found for role, names in roles.items() if (found := next((n for n in names if n in have), None))}


def detect_layout(
    columns: list[str],
    rows: list[list[Any]],
    params: list[dict[str, Any]] | None = None,
    views: Sequence[ReportView] | None = None,
) -> dict:
    """The page layout, which column plays which role, and how to show the others.

    ``views`` are the operators' report declarations (default: every registered operator's).
    """
    views = report_views() if views is None else views
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
    if _identified(views, "imgdiff", have):
        declared = _merged_roles(views, "imgdiff")
        roles = _present({r: n for r, n in declared.items() if r != "decisions"}, have)
        decisions = _decision_columns(columns, rows)
        if decisions:
            preferred = [n for n in declared.get("decisions", ()) if n in decisions]
            roles["decisions"] = preferred[0] if preferred else decisions[0]
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
        return config
    if _identified(views, "region_caption", have):
        roles = _present(_merged_roles(views, "region_caption"), have)
        if "image" not in roles and images:
            roles["image"] = images[0]  # the answer is about the row's own image
        if "image" in roles:
            config.update(kind="region_caption", roles=roles)
    return config


def report_views() -> list[ReportView]:
    """The report declarations of every operator class: the package's registry, then any other loaded one."""
    from dataflow_mm.operators.registry import operator_classes

    classes = list(operator_classes().values())
    stack = list(OperatorABC.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls not in classes:
            classes.append(cls)
    views = [view for cls in classes if isinstance(view := getattr(cls, "report_view", None), ReportView)]
    return [view for i, view in enumerate(views) if all(view is not other for other in views[:i])]
