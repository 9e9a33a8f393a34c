"""Export a run's output to training formats: ``export_run(cache_or_step_file, fmt, out_dir)``.

``samples`` turns rows into samples (and counts what it leaves out), ``boxes`` writes a box in a
model family's convention, ``formats`` writes LLaVA / LLaMA-Factory ShareGPT / messages JSONL,
``shards`` Parquet / WebDataset shards with the images inside.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dataflow_mm.export.boxes import BOX_STYLES, format_box
from dataflow_mm.export.formats import EXPORT_FORMATS, SUMMARY_NAME, write_samples
from dataflow_mm.export.samples import ExportStats, RunContext, Sample, SampleBuilder
from dataflow_mm.export.shards import ShardOptions
from dataflow_mm.storage.atomic import write_bytes_atomic

__all__ = ["BOX_STYLES", "EXPORT_FORMATS", "ExportStats", "Sample", "ShardOptions", "export_run", "format_box"]


def export_run(
    cache_or_step_file: str | os.PathLike,
    fmt: str,
    out_dir: str | os.PathLike,
    box_style: str = "qwen2_5_vl",
    copy_images: bool = False,
    step: int | None = None,
    prefix: str | None = None,
    image_key: str = "image",
    shard_options: ShardOptions | None = None,
) -> ExportStats:
    """Write the run's rows as ``fmt`` under ``out_dir`` (plus ``export_summary.json``); return the counts.

    ``cache_or_step_file`` is a cache folder (its newest run's last step) or one step file.
    Raises ``UserError`` (one line for the CLI) when there is nothing exportable.
    """
    from dataflow_mm.report import locate_step

    location = locate_step(cache_or_step_file, step=step, prefix=prefix)
    builder = SampleBuilder(location.table, RunContext.from_steps(location.steps), box_style, image_key)
    out = Path(out_dir)
    files = write_samples(builder.samples(), fmt, out, copy_images=copy_images, shard_options=shard_options)
    summary = {
        "source": str(location.table),
        "format": fmt,
        "box_style": box_style,
        "files": [p.name for p in files],
        **builder.stats.to_dict(),
    }
    write_bytes_atomic(json.dumps(summary, indent=2).encode("utf-8"), out / SUMMARY_NAME)
    return builder.stats
