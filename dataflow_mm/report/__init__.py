"""A self-contained HTML report of a pipeline run: ``write_report(cache_path)``."""

from dataflow_mm.report.html_report import (
    ReportError,
    build_report_html,
    detect_layout,
    locate_step,
    report_after_run,
    write_report,
)

__all__ = ["ReportError", "build_report_html", "detect_layout", "locate_step", "report_after_run", "write_report"]
