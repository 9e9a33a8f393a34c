"""Compute the next item of an iterator in a background thread while the caller uses this one.

Backends use it to prepare batch i+1 (image decoding, chat templates, the processor) while the
model generates batch i: exactly one item is computed ahead, so memory holds at most the item in
use, the one being prepared, and nothing more. Exceptions raised while preparing reach the
caller at the item that raised them; closing the iteration early waits for the item in progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], name: str = "prefetch") -> Iterator[T]:
    """``items`` in order, each next one computed in a background thread while the caller holds this one."""
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        ahead = pool.submit(next, iterator, _DONE)
        while True:
            item = ahead.result()
            if item is _DONE:
                return
            ahead = pool.submit(next, iterator, _DONE)
            yield item  # type: ignore[misc]
