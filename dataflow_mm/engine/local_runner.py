"""The default runner: the compiled pipeline's steps in this process, streaming chunks from step to step."""

from __future__ import annotations

from dataflow_mm.core.operator import OperatorCall
from dataflow_mm.core.results import StepResult
from dataflow_mm.engine.runner import Runner
from dataflow_mm.engine.step_executor import execute_step
from dataflow_mm.engine.streaming import DEFAULT_QUEUE_CHUNKS, can_stream, execute_streaming


class LocalRunner(Runner):
    """Executes the calls ``compile`` recorded; each step resumes by its manifest and chunk markers.

    ``streaming`` (default): one thread per step, step k+1 works on chunk i as soon as step k has
    written it (see ``engine.streaming``); False: one step after another (``--no_streaming``).
    Both write the same files.
    """

    name = "local"

    def __init__(self, streaming: bool = True, queue_chunks: int = DEFAULT_QUEUE_CHUNKS) -> None:
        self.streaming = streaming
        self.queue_chunks = queue_chunks

    def execute(self, calls: list[OperatorCall]) -> list[StepResult]:
        try:
            if self.streaming and len(calls) > 1 and can_stream(calls):
                return execute_streaming(calls, self.queue_chunks)
            return [execute_step(call) for call in calls]
        finally:
            for call in calls:
                call.storage.reset()
