"""Running the bad-input corpus (``testing.bad_inputs``) through both shipped pipelines: the figures the
README reports (``python -m tests.support.bad_inputs``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.bad_inputs import (
    build_chunk_corpus,
    build_data_juicer_corpus,
    build_imgdiff_corpus,
    build_region_caption_corpus,
)

# -- running the corpus: the figures docs/reliability.md reports ------------------------------------------------------


@dataclass
class CorpusFigures:
    """What the corpus did to both pipelines (every table run twice: the second run must find it complete)."""

    tables: int = 0
    runs: int = 0
    rows_tried: int = 0  # records read: rows plus rejected lines
    rows_with_error: int = 0  # rows kept in the output with an error
    lines_rejected: int = 0  # lines counted into the rejects file
    runs_stopped: int = 0  # runs that raised instead of finishing (must be 0)
    stops: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The README's table row."""
        return (
            f"| {self.tables} | {self.runs} | {self.rows_tried} | {self.rows_with_error} | {self.lines_rejected} "
            f"| {self.runs_stopped} |"
        )


CORPUS_HEADER = (
    "| tables | runs | rows tried | rows kept with an error | lines rejected | runs that stopped |\n"
    "|---|---|---|---|---|---|"
)


# A table run with a cache whose ``logs`` is a file: the run goes on without its log file (issue #24).
BLOCKED_LOGS_TABLE = "logs_blocked.jsonl"


def corpus_tables(folder: Path) -> list[tuple[str, Path, int]]:
    """Every corpus table: (pipeline, table, chunk size)."""
    region, _, _ = build_region_caption_corpus(folder / "region")
    pairs, _, _ = build_imgdiff_corpus(folder / "imgdiff")
    data_juicer, _ = build_data_juicer_corpus(folder / "data_juicer")
    chunks, _, chunk_pairs, good = build_chunk_corpus(folder / "chunks")
    late = folder / "late_key.jsonl"  # the image key first appears after the rows the key check peeks at
    rows = [{"case_id": f"late:{i}"} for i in range(201)] + [{"case_id": "late:good", "image": good}]
    late.write_text("".join(_json_line(r) for r in rows), encoding="utf-8")
    blocked = folder / BLOCKED_LOGS_TABLE
    blocked.write_text("".join(_json_line({"case_id": f"logs:{i}", "image": good}) for i in range(3)), encoding="utf-8")
    return [
        ("region_caption", region, 16),
        ("region_caption", chunks, 1),
        ("region_caption", late, 64),
        ("imgdiff", pairs, 8),
        ("imgdiff", chunk_pairs, 1),
        ("region_caption", blocked, 2),
        ("imgdiff", data_juicer, 4),
    ]


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row) + "\n"


def run_corpus(folder: Path, blip_model: str, similarity_model: str) -> tuple[CorpusFigures, dict[str, Path]]:
    """Run every corpus table through its shipped pipeline (fake VLM) twice; the figures, and each output file."""
    from dataflow_mm.pipeline.templates import load_pipeline_script
    from tests.support.fake_serving import FakeVLMServing

    figures, outputs = CorpusFigures(), {}
    for index, (kind, table, chunk_size) in enumerate(corpus_tables(folder)):
        figures.tables += 1
        cache = folder / f"cache_{index}_{kind}"
        if table.name == BLOCKED_LOGS_TABLE:
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "logs").write_text("a file where the run logs' folder goes\n", encoding="utf-8")
        for attempt in range(2):
            figures.runs += 1
            try:
                if kind == "region_caption":
                    pipeline = load_pipeline_script("image_region_caption_pipeline").ImageRegionCaptionPipeline(
                        FakeVLMServing(), first_entry_file=str(table), cache_path=str(cache), chunk_size=chunk_size,
                        output_image_with_bbox_path=None,
                    )  # fmt: skip
                else:
                    pipeline = load_pipeline_script("imgdiff_pipeline").ImgDiffPipeline(
                        FakeVLMServing(), first_entry_file=str(table), cache_path=str(cache), chunk_size=chunk_size,
                        bbox_format="xywh", blip_model=blip_model, similarity_model=similarity_model,
                    )  # fmt: skip
                summary = pipeline.run()
            except Exception as exc:  # the figure this corpus exists to keep at 0
                figures.runs_stopped += 1
                figures.stops.append(f"{table.name} run {attempt + 1}: {type(exc).__name__}: {str(exc)[:300]}")
                break
            finally:
                cleanup = getattr(locals().get("pipeline"), "cleanup", None)
                if callable(cleanup):
                    cleanup()
            if attempt == 0:
                figures.rows_tried += summary.rows_in
                figures.rows_with_error += summary.rows_with_error
                figures.lines_rejected += summary.rows_rejected
                outputs[f"{index}:{table.name}"] = Path(summary.output_path or "")
            elif not all(step.skipped for step in summary.steps):
                figures.stops.append(f"{table.name}: the second run redid a step")
    return figures, outputs


def main() -> None:
    """Print the corpus figures (``python -m tests.support.bad_inputs``)."""
    import logging
    import os
    import tempfile

    from dataflow_mm.models.tiny import DEFAULT_TINY_DIR, ENV_TINY_DIR, tiny_model_path

    logging.disable(logging.INFO)
    root = Path(os.environ.get(ENV_TINY_DIR) or DEFAULT_TINY_DIR).expanduser()
    blip, clip = tiny_model_path("blip_itm", root=root), tiny_model_path("clip", root=root)
    with tempfile.TemporaryDirectory(prefix="dataflow_mm_corpus_") as tmp:
        figures, _ = run_corpus(Path(tmp), str(blip), str(clip))
    print(CORPUS_HEADER)
    print(figures.markdown())
    for stop in figures.stops:
        print("STOPPED:", stop)


if __name__ == "__main__":
    main()
