"""What a step did: its StepResult (counts, causes, time, metrics) and how its metrics read.

Metrics are summable numbers per chunk: ``X`` with ``X_total`` reads as a rate, ``X_hist00`` ..
as a histogram over [0, 1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dataflow_mm.common.row_outcomes import row_counts

RATE_SUFFIX = "_total"
HISTOGRAM_MARK = "_hist"
HISTOGRAM_BINS = 10
_HISTOGRAM_KEY = re.compile(rf"^(?P<name>.+){HISTOGRAM_MARK}(?P<bin>\d{{2}})$")


def metric_rates(metrics: dict[str, float]) -> dict[str, float]:
    """``X_rate = X / X_total`` for every metric ``X`` that has an ``X_total`` (and a non-zero one)."""
    return {
        f"{name}_rate": round(value / metrics[name + RATE_SUFFIX], 4)
        for name, value in metrics.items()
        if metrics.get(name + RATE_SUFFIX)
    }


def histogram_metrics(name: str, values: list[float], bins: int = HISTOGRAM_BINS) -> dict[str, int]:
    """Counts of ``values`` (in [0, 1]) in ``bins`` equal bins, as metrics ``{name}_hist00`` .. (summable per chunk)."""
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, max(0, int(float(value) * bins)))] += 1
    return {f"{name}{HISTOGRAM_MARK}{index:02d}": count for index, count in enumerate(counts)}


def histograms(metrics: dict[str, float]) -> dict[str, list[int]]:
    """The histograms among ``metrics`` (see :func:`histogram_metrics`): name -> counts per bin, in order."""
    found: dict[str, dict[int, int]] = {}
    for key, value in metrics.items():
        match = _HISTOGRAM_KEY.match(key)
        if match:
            found.setdefault(match["name"], {})[int(match["bin"])] = int(value)
    return {name: [bins.get(i, 0) for i in range(max(bins) + 1)] for name, bins in sorted(found.items())}


def describe_metrics(metrics: dict[str, float]) -> str:
    """``region_captions_parsed 7/9 (77.8%), other 3``: each ``X``/``X_total`` pair shown as a rate.

    A histogram (``X_hist00`` ..) is shown as one item: ``X per 0.1 bin [0 2 5 ...]``.
    """
    parts = [
        f"{name} per {1 / len(counts):g} bin [{' '.join(str(c) for c in counts)}]"
        for name, counts in histograms(metrics).items()
    ]
    for name, value in sorted(metrics.items()):
        if name.endswith(RATE_SUFFIX) and name[: -len(RATE_SUFFIX)] in metrics:
            continue
        if _HISTOGRAM_KEY.match(name):
            continue
        total = metrics.get(name + RATE_SUFFIX)
        if total is not None:
            share = f" ({100 * value / total:.1f}%)" if total else ""
            parts.append(f"{name} {value:g}/{total:g}{share}")
        else:
            parts.append(f"{name} {value:g}")
    return ", ".join(parts)


@dataclass
class StepResult:
    """What one operator did to one step: counts, causes and time (datatrove-style stats)."""

    step: int
    operator: str
    output_path: str
    rows_in: int = 0
    rows_out: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    row_errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    rows_reused: int = 0  # input rows whose output an earlier run of the step had computed (``engine.row_reuse``)
    rows_computed: int = 0  # input rows the operator transformed in this run

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def outcomes(self) -> dict[str, int]:
        """Output rows by outcome: ``{"done": .., "failed": .., "pending": ..}`` (see ``row_outcomes``)."""
        return row_counts(self.rows_out, self.row_errors)

    @property
    def complete(self) -> bool:
        """No row left pending: every row is done or failed for good."""
        return self.outcomes["pending"] == 0

    def describe(self) -> str:
        if self.skipped:
            done = f"{self.rows_out} rows in {self.output_path}"
            metrics = f"; {describe_metrics(self.metrics)}" if self.metrics else ""
            failed = self.outcomes["failed"]
            done += f", {failed} failed" if failed else ""
            return f"step {self.step} {self.operator}: already complete, skipped ({done}{metrics})"
        text = f"step {self.step} {self.operator}: {self.rows_in} rows in, {self.rows_out} out"
        if self.rows_reused:
            text += f" ({self.rows_reused} reused from the earlier run, {self.rows_computed} computed)"
        if self.row_errors:
            causes = ", ".join(f"{k} x{v}" for k, v in sorted(self.row_errors.items()))
            text += f" ({sum(self.row_errors.values())} with error: {causes})"
        if self.rejected:
            causes = ", ".join(f"{k} x{v}" for k, v in sorted(self.rejected.items()))
            text += f", {self.rows_rejected} rejected ({causes})"
        if self.metrics:
            text += f"; {describe_metrics(self.metrics)}"
        if not self.complete:
            text += f"; INCOMPLETE: {self.outcomes['pending']} row(s) pending"
        return text + f", {self.seconds:.2f} s -> {self.output_path}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "operator": self.operator,
            "output_path": self.output_path,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_rejected": self.rows_rejected,
            "rejected": self.rejected,
            "row_errors": self.row_errors,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "metrics": self.metrics,
            "rates": metric_rates(self.metrics),
            "rows_done": self.outcomes["done"],
            "rows_failed": self.outcomes["failed"],
            "rows_pending": self.outcomes["pending"],
            "complete": self.complete,
            "rows_reused": self.rows_reused,
            "rows_computed": self.rows_computed,
        }
