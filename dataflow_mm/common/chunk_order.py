"""Which chunk of a step the current thread works for, so that a resource the chunks share serves the
earlier chunk first.

A step writes its chunks in order, so a later chunk answered before an earlier one only waits, and the
next chunk cannot start until the earlier one is written. The step executor runs each chunk's transform
under ``working_on_chunk``; a shared resource (the vLLM request window) reads ``current_chunk`` to line
the chunks' requests up in chunk order, whichever thread reached it first.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TypeVar

_CHUNK: ContextVar[int | None] = ContextVar("dataflow_mm_chunk", default=None)
Result = TypeVar("Result")


def current_chunk() -> int | None:
    """The index of the chunk this thread works for, or None outside a step's chunk."""
    return _CHUNK.get()


def working_on_chunk(index: int, work: Callable[..., Result], *args: object) -> Result:
    """``work(*args)`` with ``current_chunk()`` answering ``index`` (on whichever thread runs it)."""
    token = _CHUNK.set(index)
    try:
        return work(*args)
    finally:
        _CHUNK.reset(token)
