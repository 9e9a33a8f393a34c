"""Who runs an operator call: ``OperatorABC.execute`` hands its ``OperatorCall`` to :func:`dispatch`.

The operator never decides how its step runs. While a pipeline compiles, the pipeline records the
calls (``dispatching_to``); at other times the engine runs them (it installs itself as the default
with ``set_default_dispatcher`` when it is imported, which the package root does). Core thus never
imports the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Dispatcher = Callable[[Any], Any]  # takes an ``OperatorCall`` (core.operator)

_default: Dispatcher | None = None
_local = threading.local()  # per thread: a stack of dispatchers pushed by ``dispatching_to``


def set_default_dispatcher(dispatcher: Dispatcher) -> None:
    """What runs a call when no ``dispatching_to`` block is active (the engine's step executor)."""
    global _default
    _default = dispatcher


def _stack() -> list[Dispatcher]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextmanager
def dispatching_to(dispatcher: Dispatcher) -> Iterator[None]:
    """Within this block, on this thread, every call goes to ``dispatcher`` (e.g. a compile's recorder)."""
    stack = _stack()
    stack.append(dispatcher)
    try:
        yield
    finally:
        stack.pop()


@contextmanager
def recording_calls() -> Iterator[list[Any]]:
    """Within this block, calls are recorded into the returned list instead of being run."""
    calls: list[Any] = []
    with dispatching_to(calls.append):
        yield calls


def dispatch(call: Any) -> Any:
    """Hand ``call`` to the innermost active dispatcher, else to the default one."""
    stack = _stack()
    if stack:
        return stack[-1](call)
    if _default is None:
        raise RuntimeError("no engine to run operators: import dataflow_mm (the package root installs it)")
    return _default(call)
