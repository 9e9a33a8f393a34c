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

The layout follows the pipeline kind: region captions (the image with its numbered boxes beside
the answer), Img-Diff (both images with the red box of each kept box, the two region captions, the
difference caption and the per-box scores), or generic. Which columns play which role is declared
by the operators (``report_view``, read in ``report/layout.py``); columns no layout knows are shown
generically, so new operators' output renders without changes. The page's script and style are
package files (``report/assets/report.js``, ``report.css``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from dataflow_mm.report.header import esc, header_html, load_json
from dataflow_mm.report.layout import detect_layout
from dataflow_mm.report.links import image_links, media_roots
from dataflow_mm.report.locate import ReportError, locate_step
from dataflow_mm.report.rows import THUMBS_DIR, deep_clean, read_rows
from dataflow_mm.storage.manifest import StepManifest

REPORT_NAME = "report.html"


@cache
def asset(name: str) -> str:
    """A package file of the page (``assets/report.js``, ``assets/report.css``), read once."""
    return resources.files("dataflow_mm.report").joinpath("assets", name).read_text(encoding="utf-8")


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` at all."""
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        text = json.dumps(deep_clean(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
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
    summary = load_json(location.summary_path)
    shown = manifests.get(location.step) if location.step is not None else None
    known_total = shown.stats.get("rows_out") if shown and isinstance(shown.stats.get("rows_out"), int) else None
    columns, rows, total = read_rows(location.table, limit, known_total, location.cache_dir / THUMBS_DIR)
    config = detect_layout(columns, rows, [m.params for m in manifests.values()])
    roots = media_roots(location, manifests, summary, target)
    links = image_links(columns, rows, config, roots, target.resolve().parent)
    payload = {"columns": columns, "rows": rows, "config": config, "urls": links, "total": total}
    header = header_html(location, summary, manifests, config["kind"], len(rows), total)
    title = f"dataflow-mm report: {location.prefix or location.table.name}"
    style, script = asset("report.css"), asset("report.js")
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_csp(script))}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{esc(title)}</title>\n<style>{style}</style></head>\n"
        f'<body data-kind="{esc(config["kind"])}">\n<header id="summary">\n{header}\n</header>\n'
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
        f"<script>{script}</script>\n</body></html>\n"
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
