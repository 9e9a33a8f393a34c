"""The ``export`` flags of the shard formats (``--format parquet|webdataset``): when a shard closes."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataflow_mm.export.shards import ShardOptions


def _positive(kind: type) -> object:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def add_shard_flags(parser: argparse.ArgumentParser) -> None:
    """``--max_shard_samples`` and ``--max_shard_mb`` (parquet and webdataset only)."""
    from dataflow_mm.export.shards import DEFAULT_MAX_MB, DEFAULT_MAX_SAMPLES

    parser.add_argument(
        "--max_shard_samples",
        type=_positive(int),
        default=DEFAULT_MAX_SAMPLES,
        help=f"parquet/webdataset: samples per shard at most (default {DEFAULT_MAX_SAMPLES})",
    )
    parser.add_argument(
        "--max_shard_mb",
        type=_positive(float),
        default=DEFAULT_MAX_MB,
        help=f"parquet/webdataset: image and text MB per shard at most (default {DEFAULT_MAX_MB:g})",
    )


def shard_options(args: argparse.Namespace) -> ShardOptions:
    from dataflow_mm.export.shards import ShardOptions

    return ShardOptions(max_samples=args.max_shard_samples, max_bytes=int(args.max_shard_mb * 1024 * 1024))
