"""The end-of-run summary: rows in/out/rejected by cause, per step, plus what answered."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflow_mm.core.results import StepResult, metric_rates
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.storage.table_writer import write_json_atomic

SMOKE_TEST_WARNING = (
    "The model is a tiny random-weight smoke-test model: its answers are meaningless text, "
    "produced only to show that the pipeline runs end to end. Pass --model_path with a real model."
)


@dataclass
class RunSummary:
    """Counts of one pipeline run. ``rows_in == rows_out + rows_rejected`` always holds."""

    steps: list[StepResult]
    servings: list[VLMServing] = field(default_factory=list)
    log_path: str | None = None  # this run's log file under {cache_path}/logs/

    @property
    def rows_in(self) -> int:
        return self.steps[0].rows_in if self.steps else 0

    @property
    def rows_out(self) -> int:
        return self.steps[-1].rows_out if self.steps else 0

    @property
    def rows_rejected(self) -> int:
        return sum(step.rows_rejected for step in self.steps)

    @property
    def rows_with_error(self) -> int:
        return sum(self.steps[-1].row_errors.values()) if self.steps else 0

    @property
    def output_path(self) -> str | None:
        return self.steps[-1].output_path if self.steps else None

    @property
    def metrics(self) -> dict[str, float]:
        """Every step's metrics (e.g. the region-caption parse rate), with ``X_rate`` for each ``X``/``X_total``."""
        merged: dict[str, float] = {}
        for step in self.steps:
            for name, value in step.metrics.items():
                merged[name] = merged.get(name, 0) + value
        return {**merged, **metric_rates(merged)}

    @property
    def complete(self) -> bool:
        """No step holds a pending row: every row is done or failed for good."""
        return all(step.complete for step in self.steps)

    @property
    def outcomes(self) -> dict[str, dict[str, int]]:
        """Per step (``"step<k>"``): output rows done, failed and pending."""
        return {f"step{step.step}": step.outcomes for step in self.steps}

    @property
    def smoke_test(self) -> bool:
        return any(s.is_smoke_test_model for s in self.servings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_rejected": self.rows_rejected,
            "rows_with_error": self.rows_with_error,
            "complete": self.complete,
            "outcomes": self.outcomes,
            "row_errors": self.steps[-1].row_errors if self.steps else {},
            "output_path": self.output_path,
            "metrics": self.metrics,
            "steps": [step.to_dict() for step in self.steps],
            "servings": [{**s.describe(), "stats": vars(s.stats)} for s in self.servings],
            "smoke_test_model": self.smoke_test,
            "log_path": self.log_path,
        }

    def text(self) -> str:
        lines = ["", "==== dataflow-mm run summary ===="]
        lines += [step.describe() for step in self.steps]
        errors = self.steps[-1].row_errors if self.steps else {}
        causes = ", ".join(f"{k} x{v}" for k, v in sorted(errors.items()))
        lines.append(
            f"rows: {self.rows_in} in, {self.rows_out} out"
            + (f" ({self.rows_with_error} with error: {causes})" if errors else "")
            + f", {self.rows_rejected} rejected"
        )
        for serving in self.servings:
            s = serving.stats
            lines.append(
                f"model: {serving.model_id} via {serving.backend_name}; {s.requests} requests in {s.calls} "
                f"batched calls, {s.failed} failed, {s.retried} retried, {s.truncated} truncated at max_tokens; "
                f"tokens: {s.prompt_tokens} prompt, "
                f"{s.completion_tokens} generated"
                + "".join(
                    f"; {s.extra[key]} {label}"
                    for key, label in (("budget_downscaled", "downscaled to fit"), ("budget_too_long", "too long"))
                    if s.extra.get(key)
                )
            )
        lines.append(self._outcome_line())
        if self.output_path:
            lines.append(f"output: {self.output_path}")
        if self.log_path:
            lines.append(f"log: {self.log_path}")
        if self.smoke_test:
            lines.append("WARNING: " + SMOKE_TEST_WARNING)
        return "\n".join(lines)

    def _outcome_line(self) -> str:
        counts = "; ".join(
            f"step {s.step}: {o['done']} done, {o['failed']} failed, {o['pending']} pending"
            for s, o in ((s, s.outcomes) for s in self.steps)
        )
        if self.complete:
            return f"run complete ({counts})"
        return f"run INCOMPLETE ({counts}): rerun the same command to continue"

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(self.to_dict(), path)
