"""Streaming between steps: step k+1 starts on chunk i as soon as step k has finished it.

One worker thread per step; a bounded queue carries each finished chunk (the JSON lines its part
holds, exactly what the step file will hold) from a step to the step that reads its file. Every
step still runs through the step executor, so it writes its own parts, markers, step file and
manifest: the files are byte-identical to a sequential run, and a killed run resumes the same way
(a streamed step's markers record the hash of the input lines of each chunk; see ``storage.step``).

A step streams from the one before when it reads that step's JSONL step file through the same
storage. Otherwise (another storage's first entry, an extra output, another table format) it waits
until the step it reads has committed. A step whose manifest names its current fingerprint also
waits, so that a re-run skips it when its input turns out unchanged. Model steps keep their
batching (one transform per chunk); a model shared by two steps is used by one of them at a time.
"""

from __future__ import annotations

import functools
import io
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.operator import OperatorCall
from dataflow_mm.core.results import StepResult
from dataflow_mm.engine.step_executor import InProcessTransformer, TransformerFactory, execute_step
from dataflow_mm.storage.jsonl_reading import iter_jsonl_lines
from dataflow_mm.storage.manifest import StepManifest

log = get_logger("runners")

DEFAULT_QUEUE_CHUNKS = 4  # finished chunks that may wait between two steps
_POLL_SECONDS = 0.1


class _Aborted(Exception):
    """Another step failed: this one stops (the other's error is the one reported)."""


class _Channel:
    """What one step tells the step that streams from it: opened (streaming or not), chunks, committed."""

    def __init__(self, abort: threading.Event, size: int) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=size)
        self._abort = abort

    def _put(self, item: tuple[str, Any]) -> None:
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _get(self) -> tuple[str, Any]:
        while True:
            if self._abort.is_set():
                raise _Aborted
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue

    # the producer's side (engine.step_executor.StepOutlet)
    def opened(self, streaming: bool) -> None:
        self._put(("opened", streaming))

    def chunk(self, data: bytes) -> None:
        self._put(("chunk", data))

    def committed(self) -> None:
        self._put(("committed", None))

    # the consumer's side
    def streaming(self) -> bool:
        """Whether chunks follow (True) or the step before was complete already (False, its file is there)."""
        kind, value = self._get()
        assert kind == "opened", kind
        if not value:
            self._get()  # its "committed"
        return bool(value)

    def lines(self) -> Iterator[bytes]:
        """The step file's lines as they are produced; ends once the step before has committed its file."""
        while True:
            kind, value = self._get()
            if kind == "committed":
                return
            yield from io.BytesIO(value)


class _Fanout:
    """One step's outlet to every step that streams from it."""

    def __init__(self, channels: list[_Channel]) -> None:
        self.channels = channels

    def opened(self, streaming: bool) -> None:
        for channel in self.channels:
            channel.opened(streaming)

    def chunk(self, data: bytes) -> None:
        for channel in self.channels:
            channel.chunk(data)

    def committed(self) -> None:
        for channel in self.channels:
            channel.committed()


@dataclass
class _Plan:
    """Per step: the step whose file it reads (if any), whether it streams from it, and its model locks."""

    producer: int | None = None
    streams: bool = False
    locks: list[threading.Lock] = field(default_factory=list)


def _input_key(call: OperatorCall) -> str:
    storage = call.storage
    if storage.operator_step <= 0:  # the storage's first entry: the user's file, or another step's output
        return os.path.abspath(storage.first_entry_file_name)
    return os.path.abspath(storage.input_path)


def _shared_objects(call: OperatorCall) -> list[Any]:
    """The objects of an operator that may hold a model (servings, scorers): the ones steps could share."""
    return [
        value
        for value in vars(call.operator).values()
        if callable(getattr(value, "cleanup", None)) or callable(getattr(value, "load", None))
    ]


def plan(calls: list[OperatorCall]) -> list[_Plan]:
    """Which step each step reads from and whether it can stream from it; one lock per shared model."""
    plans = [_Plan() for _ in calls]
    written: dict[str, int] = {}
    for index, call in enumerate(calls):
        producer = written.get(_input_key(call))
        if producer is not None:
            before = calls[producer]
            same_file = os.path.abspath(before.storage.output_path) == _input_key(call)
            manifest = StepManifest.load(call.storage.output_path)
            current = manifest is not None and manifest.fingerprint == call.operator.fingerprint(call.keys)
            plans[index] = _Plan(
                producer,
                streams=same_file
                and call.storage.operator_step > 0
                and before.storage.cache_type == "jsonl"
                and not current,
            )
        for path in [call.storage.output_path, *call.operator.extra_output_paths()]:
            written[os.path.abspath(path)] = index
    holders: dict[int, list[int]] = {}
    for index, call in enumerate(calls):
        for value in _shared_objects(call):
            holders.setdefault(id(value), []).append(index)
    for steps in holders.values():
        if len(steps) > 1:
            lock = threading.Lock()
            for index in steps:
                plans[index].locks.append(lock)
    return plans


def can_stream(calls: list[OperatorCall]) -> bool:
    """Steps run in threads only when no operator object serves two steps (its per-step state would clash)."""
    return len({id(call.operator) for call in calls}) == len(calls)


def execute_streaming(
    calls: list[OperatorCall],
    queue_chunks: int = DEFAULT_QUEUE_CHUNKS,
    transformers: Sequence[TransformerFactory] | None = None,
) -> list[StepResult]:
    """Run every call, each in its own thread, chunks streaming between steps; results in step order.

    ``transformers``: per step, what transforms its chunks (default: the operator in this process,
    holding the locks of the models it shares with other steps).
    """
    plans = plan(calls)
    if transformers is None:
        transformers = [
            functools.partial(InProcessTransformer, model_lock=_Locks(step.locks) if step.locks else None)
            for step in plans
        ]
    abort = threading.Event()
    finished = [threading.Event() for _ in calls]
    channels: dict[int, _Channel] = {}
    outlets: dict[int, list[_Channel]] = {}
    for index, step in enumerate(plans):
        if step.streams and step.producer is not None:
            channels[index] = _Channel(abort, queue_chunks)
            outlets.setdefault(step.producer, []).append(channels[index])
    for index, step in enumerate(plans):
        if step.producer is None:
            _ = calls[index].storage.input_path  # resolve the first entry once, before the threads start
    results: list[StepResult | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def wait(event: threading.Event) -> None:
        while not event.wait(_POLL_SECONDS):
            if abort.is_set():
                raise _Aborted

    def work(index: int) -> None:
        call, step = calls[index], plans[index]
        try:
            source = None
            if index in channels:
                if channels[index].streaming():
                    source = iter_jsonl_lines(channels[index].lines(), call.storage.chunk_size)
            elif step.producer is not None:
                wait(finished[step.producer])
            outlet = _Fanout(outlets[index]) if index in outlets else None
            results[index] = execute_step(call, source, outlet, transformers[index])
            finished[index].set()
        except _Aborted:
            pass
        except BaseException as exc:  # reported by the main thread, which re-raises the first one
            errors.append(exc)
            abort.set()

    threads = [
        threading.Thread(target=work, args=(i,), name=f"dataflow_mm-step{c.storage.output_step}", daemon=True)
        for i, c in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(_POLL_SECONDS)
    except BaseException:
        abort.set()
        raise
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


class _Locks:
    """Holds a step's shared-model locks around one chunk (always taken in the same order)."""

    def __init__(self, locks: list[threading.Lock]) -> None:
        self.locks = locks

    def __enter__(self) -> None:
        for lock in self.locks:
            lock.acquire()

    def __exit__(self, *_: Any) -> None:
        for lock in reversed(self.locks):
            lock.release()
