"""The default runner: the pipeline's own ``forward()`` in this process, chunk by chunk."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataflow_mm.operators.base import OperatorCall, StepResult, collecting_results
from dataflow_mm.runners.base import Runner

if TYPE_CHECKING:
    from dataflow_mm.pipeline.base import PipelineABC


class LocalRunner(Runner):
    """Calls ``forward()`` for real; each operator streams its step in chunks and resumes by manifests."""

    name = "local"

    def execute(self, pipeline: PipelineABC, calls: list[OperatorCall]) -> list[StepResult]:
        with collecting_results() as results:
            pipeline.forward()
        for call in calls:
            call.storage.reset()
        return results
