"""Runners decide where a compiled pipeline executes; the operators stay the same on each."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from dataflow_mm.core.operator import OperatorCall, StepResult

if TYPE_CHECKING:
    from dataflow_mm.pipeline.base import PipelineABC


class Runner(ABC):
    """Executes the operator calls that ``PipelineABC.compile`` recorded, step by step."""

    name: str = "base"

    @abstractmethod
    def execute(self, pipeline: PipelineABC, calls: list[OperatorCall]) -> list[StepResult]:
        """Run every call in order and return one StepResult per step."""
