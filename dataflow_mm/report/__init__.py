"""A self-contained HTML report of a pipeline run: ``write_report(cache_path)``."""

from dataflow_mm.report.html_report import build_report_html, report_after_run, write_report
from dataflow_mm.report.layout import detect_layout
from dataflow_mm.report.locate import ReportError, locate_step

__all__ = ["ReportError", "build_report_html", "detect_layout", "locate_step", "report_after_run", "write_report"]
