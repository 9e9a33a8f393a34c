"""`dataflowmm status CACHE_PATH`: per step, rows done / failed / pending, complete or not, what a rerun does."""

from __future__ import annotations

import argparse
import json
import sys

from dataflow_mm.common.errors import EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_USAGE
from dataflow_mm.common.secrets import scrub


def add_status_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``status`` subcommand on the CLI's subparsers."""
    status = commands.add_parser(
        "status",
        help="show per step the rows done / failed / pending and what rerunning the same command would do",
        description="Where a run stands (like git status). Exit 0: complete; 3: incomplete; 2: no such cache.",
    )
    status.add_argument("cache_path", help="the pipeline's cache folder (--cache_path of the run)")
    status.add_argument(
        "--prefix", default=None, help="file name prefix of the run, when the folder holds several (default: newest)"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from dataflow_mm.storage.cache_status import cache_status

    try:
        status = cache_status(args.cache_path, args.prefix)
    except (FileNotFoundError, LookupError) as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(status.to_dict(), indent=1) if args.json else status.text())
    return EXIT_COMPLETE if status.complete else EXIT_INCOMPLETE
