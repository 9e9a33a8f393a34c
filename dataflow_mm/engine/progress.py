"""Per-step progress: a bar on a terminal, plain log lines otherwise (CI logs, files, Ray workers)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from dataflow_mm.common.logger import get_logger

log = get_logger("progress")
LOG_EVERY_SECONDS = 10.0


def count_rows(path: Path, table_type: str) -> int | None:
    """Rows in a table without parsing it (non-blank JSONL lines, parquet metadata); None when unknown."""
    try:
        if table_type == "jsonl":
            with path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        if table_type == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
    except OSError:
        return None
    return None


class StepProgress:
    """Rows done / total and rows per second for one step."""

    def __init__(self, description: str, total: int | None, stream: Any = None) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self._last_log = self.started
        self._bar = None
        stream = stream or sys.stderr
        if getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, unit="rows", file=stream, dynamic_ncols=True)

    def update(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.update(rows)
            return
        now = time.perf_counter()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.description}: {self.done}{total} rows{share}, {self.done / elapsed:.1f} rows/s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
