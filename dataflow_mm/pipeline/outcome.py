"""What a run's exit code says: complete (0), incomplete (3: rerun the same command to continue), too
many rows failed for good (4, only with ``--max_failed_rows`` / ``--max_failed_fraction``).

A run is complete when no step holds a pending row (every row is done or failed permanently, see
``errors.row_outcome``). The scripts call :func:`check_outcome` after the run; ``script.run_main``
turns the :class:`RunOutcomeError` it raises (and a ``RunStoppedError``) into one line and the code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataflow_mm.common.errors import EXIT_BUG, EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_USAGE, DataflowMMError

if TYPE_CHECKING:
    from dataflow_mm.pipeline.summary import RunSummary

EXIT_TOO_MANY_FAILED = 4  # complete, but more rows failed for good than --max_failed_rows/--max_failed_fraction allow
RERUN_HINT = "rerun the same command to continue"

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_COMPLETE}  complete: every row of every step done or failed for good (the summary counts them)
  {EXIT_BUG}  a bug (a traceback)
  {EXIT_USAGE}  usage or configuration error (one line: a bad flag, a missing file, a server refusing every request)
  {EXIT_INCOMPLETE}  incomplete: rows pending (the server did not answer them) or the run stopped early;
     {RERUN_HINT} (it sends only the rows not done; --retry_failed also redoes failed rows)
  {EXIT_TOO_MANY_FAILED}  complete, but more rows failed for good than --max_failed_rows / --max_failed_fraction allow
(`dataflowmm status <cache_path>` shows per step the rows done / failed / pending and what a rerun would do)"""


class RunOutcomeError(DataflowMMError):
    """The run ended but not as a success: its message is one line, ``exit_code`` says which way."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def outcome_error(
    summary: RunSummary, max_failed_rows: int | None = None, max_failed_fraction: float | None = None
) -> RunOutcomeError | None:
    """Why ``summary``'s run is not a success (None when it is): rows pending, or too many failed."""
    pending = {step.step: step.outcomes["pending"] for step in summary.steps if step.outcomes["pending"]}
    if pending:
        where = ", ".join(f"step {k}: {n}" for k, n in pending.items())
        return RunOutcomeError(f"incomplete: rows pending ({where}); {RERUN_HINT}", EXIT_INCOMPLETE)
    for step in summary.steps:
        failed = step.outcomes["failed"]
        share = failed / step.rows_out if step.rows_out else 0.0
        if (max_failed_rows is not None and failed > max_failed_rows) or (
            max_failed_fraction is not None and share > max_failed_fraction
        ):
            return RunOutcomeError(
                f"too many rows failed: step {step.step} {step.operator} has {failed} of {step.rows_out} rows "
                f"failed ({100 * share:.1f}%; allowed: --max_failed_rows {max_failed_rows}, "
                f"--max_failed_fraction {max_failed_fraction}); --retry_failed redoes them",
                EXIT_TOO_MANY_FAILED,
            )
    return None


def check_outcome(
    summary: RunSummary, max_failed_rows: int | None = None, max_failed_fraction: float | None = None
) -> None:
    """Raise :class:`RunOutcomeError` when the run is incomplete or failed too many rows."""
    error = outcome_error(summary, max_failed_rows, max_failed_fraction)
    if error is not None:
        raise error
