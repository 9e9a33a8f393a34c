"""The report's header: run counts, models, steps, operator parameters and rejected records."""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

from dataflow_mm.common.errors import ROW_DONE, ROW_FAILED, ROW_PENDING
from dataflow_mm.common.row_outcomes import stats_counts
from dataflow_mm.report.histogram import histograms_html
from dataflow_mm.report.locate import StepLocation
from dataflow_mm.storage.manifest import StepManifest

MAX_REJECTS_SHOWN = 200


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True, default=str)


def load_json(path: Path | None) -> dict[str, Any] | None:
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
    head = (
        "<tr><th>step</th><th>operator</th><th>in</th><th>out</th><th>done</th><th>failed</th><th>pending</th>"
        "<th>rejected</th><th>errors</th><th>s</th></tr>"
    )
    body = []
    for step in steps:
        errors = ", ".join(f"{k} ×{v}" for k, v in sorted((step.get("row_errors") or {}).items()))
        rejected = ", ".join(f"{k} ×{v}" for k, v in sorted((step.get("rejected") or {}).items()))
        mark = ' class="shown"' if step.get("step") == shown else ""
        skipped = " (skipped: already complete)" if step.get("skipped") else ""
        outcome = stats_counts(step)  # done / failed / pending (also for summaries written before outcomes)
        pending = outcome[ROW_PENDING]
        skipped += " (INCOMPLETE: rerun the same command to continue)" if pending else ""
        body.append(
            f"<tr{mark}><td>{esc(step.get('step'))}</td><td>{esc(step.get('operator'))}{skipped}</td>"
            f"<td>{esc(step.get('rows_in'))}</td><td>{esc(step.get('rows_out'))}</td>"
            f"<td>{outcome[ROW_DONE]}</td><td>{outcome[ROW_FAILED]}</td><td>{pending}</td>"
            f"<td>{esc(step.get('rows_rejected'))}{' (' + esc(rejected) + ')' if rejected else ''}</td>"
            f"<td>{esc(errors) or '0'}</td><td>{esc(step.get('seconds'))}</td></tr>"
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
                    f"<li>step {index}, line {esc(record.get('line'))}: <b>{esc(record.get('cause'))}</b> "
                    f"{esc(record.get('message'))}<pre>{esc(record.get('raw', ''))}</pre></li>"
                )
    if not total:
        return ""
    more = f"<p>… and {total - len(items)} more</p>" if total > len(items) else ""
    summary = f"<summary>Rejected records ({total})</summary>"
    return f'<details class="rejects">{summary}<ul>{"".join(items)}</ul>{more}</details>'


def header_html(
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
        f'<h1>dataflow-mm report <span class="kind">{esc(kind_names[kind])}</span></h1>',
        f'<p class="meta">{esc(title)}{esc(operator)} · <code>{esc(location.table)}</code> · generated '
        f"{esc(_dt.datetime.now().isoformat(timespec='seconds'))}</p>",
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
            stat_cells.append(f'<div class="stat" data-stat="{key}"><b>{esc(counts[key])}</b> {label}</div>')
    steps = (summary or {}).get("steps") or [m.stats for _, m in sorted(manifests.items()) if m.stats]
    pending = sum(stats_counts(step)[ROW_PENDING] for step in steps)
    if steps:
        verdict = f"INCOMPLETE: {pending} row(s) pending, rerun to continue" if pending else "complete"
        stat_cells.append(f'<div class="stat" data-stat="complete"><b>{esc(verdict)}</b></div>')
    causes = counts.get("row_errors") or {}
    if causes:
        text = ", ".join(f"{k} ×{v}" for k, v in sorted(causes.items()))
        stat_cells.append(f'<div class="stat causes">errors: {esc(text)}</div>')
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
                f'<tr><td class="model">{esc(serving.get("model"))}</td><td class="backend">'
                f"{esc(serving.get('backend'))}</td><td>{esc(params)}</td><td>{esc(usage)}</td></tr>"
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
        f"<h3>step {k}: {esc(m.operator)}</h3><pre>{esc(_json_text(m.params))}</pre>"
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
