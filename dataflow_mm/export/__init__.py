"""Export a run's output to training formats: ``export_run(cache_or_step_file, fmt, out_dir)``.

``samples`` turns rows into samples (and counts what it leaves out), ``boxes`` writes a box in a
model family's convention, ``formats`` writes LLaVA / LLaMA-Factory ShareGPT / messages JSONL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dataflow_mm.errors import UserError
from dataflow_mm.export.boxes import BOX_STYLES, format_box
from dataflow_mm.export.formats import EXPORT_FORMATS, SUMMARY_NAME, data_file_name, sharegpt_entry, write_samples
from dataflow_mm.export.samples import SKIP_UNUSABLE, ExportStats, RunContext, Sample, SampleBuilder
from dataflow_mm.export.targets import (
    DATASET_INFO_NAME,
    DEFAULT_DATASET_NAME,
    check_dataset_name,
    check_out_dir,
    merged_dataset_info,
    refuse_existing,
    summary_is_replaceable,
)
from dataflow_mm.storage.atomic import write_bytes_atomic

__all__ = ["BOX_STYLES", "EXPORT_FORMATS", "ExportStats", "Sample", "export_run", "format_box"]

MISSING_IMAGE = f"{SKIP_UNUSABLE}:ImageNotFoundError"


def export_run(
    cache_or_step_file: str | os.PathLike,
    fmt: str,
    out_dir: str | os.PathLike,
    box_style: str = "qwen2_5_vl",
    copy_images: bool = False,
    step: int | None = None,
    prefix: str | None = None,
    image_key: str = "image",
    dataset_name: str = DEFAULT_DATASET_NAME,
    overwrite: bool = False,
) -> ExportStats:
    """Write the run's rows as ``fmt`` under ``out_dir`` (plus ``export_summary.json``); return the counts.

    ``cache_or_step_file`` is a cache folder (its newest run's last step) or one step file.
    Raises ``UserError`` (one line for the CLI) when there is nothing exportable, when ``out_dir``
    is a file, when a data file there exists (unless ``overwrite``; ``dataset_info.json`` is merged,
    see :mod:`dataflow_mm.export.targets`), and when rows were read but none could be exported
    because their images are missing (nothing is written then).
    """
    from dataflow_mm.report import locate_step

    out = Path(out_dir)
    check_out_dir(out)
    check_dataset_name(dataset_name)
    location = locate_step(cache_or_step_file, step=step, prefix=prefix)
    target = out / data_file_name(fmt, dataset_name)
    refuse_existing([target], overwrite)  # before any image is copied
    summary_is_replaceable(out / SUMMARY_NAME, overwrite)
    if fmt == "sharegpt":
        merged_dataset_info(out / DATASET_INFO_NAME, dataset_name, sharegpt_entry(target.name), overwrite)
    builder = SampleBuilder(location.table, RunContext.from_steps(location.steps), box_style, image_key)
    samples = list(builder.samples())
    stats = builder.stats
    if stats.rows_in and not stats.samples and stats.rows_skipped.get(MISSING_IMAGE):
        example = next(iter(stats.missing_images), "?")
        raise UserError(
            f"0 of {stats.rows_in} rows exported: the images of {stats.rows_skipped[MISSING_IMAGE]} rows were not "
            f"found (e.g. '{example}'); run the export where the run ran, or move the images back (nothing written)"
        )
    files = write_samples(samples, fmt, out, copy_images=copy_images, dataset_name=dataset_name, overwrite=overwrite)
    summary = {
        "source": str(location.table),
        "format": fmt,
        "box_style": box_style,
        "files": [p.name for p in files],
        **stats.to_dict(),
    }
    write_bytes_atomic(json.dumps(summary, indent=2).encode("utf-8"), out / SUMMARY_NAME)
    return stats
