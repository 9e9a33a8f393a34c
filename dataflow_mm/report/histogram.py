"""A small score histogram for the report header (plain HTML bars, no script, no external resources)."""

from __future__ import annotations

import html
from typing import Any

from dataflow_mm.core.results import histograms

BAR_HEIGHT_PX = 60


def _metrics(summary: dict[str, Any] | None, step_stats: list[dict[str, Any]]) -> dict[str, float]:
    if summary and isinstance(summary.get("metrics"), dict):
        return summary["metrics"]
    merged: dict[str, float] = {}
    for stats in step_stats:
        for name, value in (stats.get("metrics") or {}).items():
            merged[name] = merged.get(name, 0) + value
    return merged


def histograms_html(summary: dict[str, Any] | None, step_stats: list[dict[str, Any]]) -> str:
    """One bar chart per histogram among the run's metrics (e.g. ``region_caption_score``); ``""`` if none."""
    charts = []
    for name, counts in histograms(_metrics(summary, step_stats)).items():
        peak = max(counts) or 1
        width = 1 / len(counts)
        bars = "".join(
            f'<div class="bar" title="{i * width:.1f}–{(i + 1) * width:.1f}: {c}" style="display:inline-block;'
            f"width:22px;margin-right:2px;vertical-align:bottom;background:#4a7bd0;"
            f'height:{max(1, round(BAR_HEIGHT_PX * c / peak))}px"></div>'
            for i, c in enumerate(counts)
        )
        labels = " ".join(str(c) for c in counts)
        charts.append(
            f'<figure class="histogram" data-metric="{html.escape(name)}"><figcaption>{html.escape(name)} '
            f"distribution (0 to 1, bins of {width:g}; counts: {labels})</figcaption>"
            f'<div style="height:{BAR_HEIGHT_PX}px;white-space:nowrap">{bars}</div></figure>'
        )
    return "".join(charts)
