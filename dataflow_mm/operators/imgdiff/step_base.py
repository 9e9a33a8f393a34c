"""What the Img-Diff operators share: the report page, their image pairs and their box counts.

``ImgDiffOperator`` is mixed in before ``OperatorABC`` (``class X(ImgDiffOperator, OperatorABC)``; not an
operator itself, so the registry lists only the real ones). Each Img-Diff operator declares only what is
its own: its keys, its constructor and ``process``;
``counted_steps`` names the drop steps (``dropped_at`` values, ``imgdiff_common``) whose box counts
its ``chunk_metrics`` reports, and an operator that reads the image pairs sets ``self.images`` to a
``PairLoader``, which ``prepare`` points at the storage's media.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from dataflow_mm.operators.imgdiff.box_decisions import (
    DECISIONS_KEY,
    IMGDIFF_REPORT_VIEW,
    ImagePair,
    PairLoader,
    decision_metrics,
    decisions_column,
    error_list,
    rows_with_kept_boxes,
)
from dataflow_mm.storage.file_storage import FileStorage


class ImgDiffOperator:
    """What every Img-Diff operator shares (the operator contract itself comes from ``OperatorABC``)."""

    report_view = IMGDIFF_REPORT_VIEW  # what the HTML report shows of the output
    counted_steps: ClassVar[tuple[str, ...]] = ()
    images: PairLoader | None = None

    def prepare(self, storage: FileStorage) -> None:
        if self.images is not None:
            self.images.bind(storage)

    def chunk_metrics(self, frame: pd.DataFrame, decisions_key: str = DECISIONS_KEY, **_: Any) -> dict[str, float]:
        """Per counted step: ``boxes_after_<step>`` out of ``..._total`` (a keep rate in the run summary)."""
        return decision_metrics(frame, decisions_key, self.counted_steps) if self.counted_steps else {}

    def kept_box_rows(
        self, frame: pd.DataFrame, keys: dict[str, Any]
    ) -> tuple[pd.DataFrame, list[Any], list[list[dict[str, Any]]], dict[int, ImagePair]]:
        """The start of a step on the kept boxes: a copy of the chunk, its errors, each row's decisions and
        the image pairs of the rows that still have a kept box (a row whose images fail gets the error)."""
        assert self.images is not None, f"{type(self).__name__} reads no images"
        out = frame.copy()
        errors = error_list(out)
        decisions = decisions_column(out, keys["decisions_key"])
        return out, errors, decisions, self.images.pairs_at(out, keys, rows_with_kept_boxes(decisions), errors)
