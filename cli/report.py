"""`dataflowmm report CACHE_PATH`: write the run's self-contained HTML report."""

from __future__ import annotations

import argparse
import sys
import time


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``report`` subcommand on the CLI's subparsers."""
    report = commands.add_parser(
        "report",
        help="write a self-contained HTML report of a run (images, captions, errors, summary)",
        description="Write one self-contained HTML file showing a pipeline run's rows and summary.",
    )
    report.add_argument("cache_path", help="the pipeline's cache folder (or one step file)")
    report.add_argument("--out", default=None, help="HTML file to write (default: CACHE_PATH/report.html)")
    report.add_argument("--step", type=int, default=None, help="step number to show (default: the last step)")
    report.add_argument("--limit", type=int, default=None, help="show only the first K rows")
    report.add_argument(
        "--prefix", default=None, help="file name prefix of the run, when the folder holds several (default: newest)"
    )
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from dataflow_mm.common.secrets import scrub
    from dataflow_mm.report import ReportError, write_report

    started = time.perf_counter()
    try:
        path = write_report(args.cache_path, out=args.out, step=args.step, limit=args.limit, prefix=args.prefix)
    except ReportError as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    size = path.stat().st_size / 1e6
    print(f"report: {path} ({size:.1f} MB, {time.perf_counter() - started:.1f} s)")
    return 0
