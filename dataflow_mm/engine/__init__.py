"""Where pipelines execute: in-process (default) or on Ray; both through one step executor.

Importing the engine makes it the default dispatcher of operator calls (``core.dispatch``): an operator's
``run`` outside a compiling pipeline (DataFlow-MM style ``forward()``, or a direct ``op.run(storage)``)
runs its step here. The package root imports the engine, so that is true after ``import dataflow_mm``.
"""

from __future__ import annotations

from dataflow_mm.common.errors import UserError
from dataflow_mm.core.dispatch import set_default_dispatcher
from dataflow_mm.engine.local_runner import LocalRunner
from dataflow_mm.engine.runner import Runner
from dataflow_mm.engine.step_executor import execute_step

set_default_dispatcher(execute_step)

RUNNERS = ("local", "ray")


def get_runner(runner: Runner | str | None) -> Runner:
    """A Runner from an instance, a name ("local", "ray") or None (local)."""
    if isinstance(runner, Runner):
        return runner
    if runner in (None, "local"):
        return LocalRunner()
    if runner == "ray":
        from dataflow_mm.engine.ray_runner import RayRunner

        return RayRunner()
    raise UserError(f"Unknown runner '{runner}': choose one of {', '.join(RUNNERS)}")


__all__ = ["RUNNERS", "LocalRunner", "Runner", "get_runner"]
