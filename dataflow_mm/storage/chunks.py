"""What reading a table yields: chunks of rows, and the records that could not become rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Reject:
    """An input record that could not become a row: where it was and why."""

    line: int
    cause: str
    message: str
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "cause": self.cause, "message": self.message, "raw": self.raw}


@dataclass
class Chunk:
    """A slice of a table: the rows read, and the records rejected while reading them."""

    frame: pd.DataFrame
    rejects: list[Reject] = field(default_factory=list)
    sha256: str | None = None  # of the raw lines read (JSONL only): identifies the chunk across runs


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(records, dtype=object) if records else pd.DataFrame()
