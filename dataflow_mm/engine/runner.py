"""Runners decide where a compiled pipeline executes; the operators stay the same on each."""

from __future__ import annotations

from abc import ABC, abstractmethod

from dataflow_mm.core.operator import OperatorCall
from dataflow_mm.core.results import StepResult


class Runner(ABC):
    """Executes the operator calls that ``PipelineABC.compile`` recorded, step by step."""

    name: str = "base"

    @abstractmethod
    def execute(self, calls: list[OperatorCall]) -> list[StepResult]:
        """Run every call in order and return one StepResult per step."""
