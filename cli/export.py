"""`dataflowmm export CACHE_OR_STEP_FILE --format F --out DIR`: write a run's rows as training data."""

from __future__ import annotations

import argparse
import sys

from dataflow_mm.cli.export_shards import add_shard_flags, shard_options
from dataflow_mm.common.secrets import scrub


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``export`` subcommand on the CLI's subparsers."""
    from dataflow_mm.export import BOX_STYLES, EXPORT_FORMATS

    export = commands.add_parser(
        "export",
        help="write a run's output as training data (LLaVA, LLaMA-Factory ShareGPT, messages JSONL)",
        description="Turn region captions or Img-Diff difference captions into conversations for training.",
    )
    export.add_argument("cache_path", help="the pipeline's cache folder (its last step) or one step file")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="fmt")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument(
        "--box_style",
        choices=BOX_STYLES,
        default="qwen2_5_vl",
        help="qwen2_5_vl: absolute pixels [x0, y0, x1, y1]; normalized: integers 0-1000",
    )
    export.add_argument("--copy_images", action="store_true", help="copy images into OUT/images/ (default: link)")
    export.add_argument("--step", type=int, default=None, help="step to export (default: the last)")
    export.add_argument("--prefix", default=None, help="file name prefix of the run (default: newest)")
    export.add_argument("--image_key", default="image", help="column of the region-caption rows' original image")
    add_shard_flags(export)
    export.add_argument(
        "--dataset_name",
        default="dataflow_mm",
        help="sharegpt: the entry added to OUT/dataset_info.json (merged: other entries stay) and the data file "
        "NAME.json (default: dataflow_mm, file sharegpt.json)",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing data file in OUT (and a differing dataset_info.json entry of the same name); "
        "without it, an existing one stops the export with exit 2",
    )
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from dataflow_mm.common.errors import UserError
    from dataflow_mm.export import export_run

    try:
        stats = export_run(
            args.cache_path,
            args.fmt,
            args.out,
            box_style=args.box_style,
            copy_images=args.copy_images,
            step=args.step,
            prefix=args.prefix,
            image_key=args.image_key,
            shard_options=shard_options(args),
            dataset_name=args.dataset_name,
            overwrite=args.overwrite,
        )
    except UserError as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{k} x{v}" for k, v in sorted(stats.rows_skipped.items())) or "none"
    regions = ", ".join(f"{k} x{v}" for k, v in sorted(stats.regions_skipped.items())) or "none"
    print(
        f"export ({stats.kind or 'empty'}): {stats.rows_in} rows in, {stats.rows_exported} exported "
        f"as {stats.samples} samples / {stats.turns} turns; rows left out: {skipped}; "
        f"regions/boxes left out: {regions} -> {args.out}"
    )
    return 0
