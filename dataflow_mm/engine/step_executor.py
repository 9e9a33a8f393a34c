"""The step executor: runs one recorded operator call over its step, chunk by chunk.

It owns the loop every runner shares: the lock, the resume check (a step whose manifest proves it
current is skipped), the chunks not done yet (one ``chunk_processing.run_chunk`` each, written through the
storage's step transaction), and the commit (step file, rejects, extra outputs, manifest). The
operator only transforms a chunk; the storage only keeps files.

For streaming (see ``engine.streaming``) a step can take its chunks from the step before
(``source``) and hand each finished chunk on to the step after (``outlet``).

Who transforms a chunk is a :class:`ChunkTransformer`: in this process by default
(:class:`InProcessTransformer`), or by Ray workers (``engine.ray_runner``). A transformer may have
several chunks in flight (an API serving keeps its request pool full across chunk boundaries; Ray
keeps every actor busy); the chunks are still written, marked and handed on one by one in chunk
order, so the files are the same whichever transforms them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import pandas as pd

from dataflow_mm.common.chunk_order import working_on_chunk
from dataflow_mm.common.errors import PipelineCompileError, RunStoppedError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.operator import OperatorCall
from dataflow_mm.core.results import StepResult
from dataflow_mm.engine.chunk_processing import provenance_ref, run_chunk
from dataflow_mm.engine.progress import StepProgress, count_rows
from dataflow_mm.engine.row_reuse import ReusingTransformer
from dataflow_mm.storage.chunks import Chunk
from dataflow_mm.storage.manifest import StepManifest
from dataflow_mm.storage.paths import check_writes
from dataflow_mm.storage.step import StepChunk, StepIdentity, StepTransaction

log = get_logger("operators")
MAX_CHUNKS_IN_FLIGHT = 64  # a transformer asking for more gets this many (threads, chunks held in memory)
IN_FLIGHT_RECHECK_S = 0.2  # while the oldest chunk runs, how often its transformer's in_flight is asked again


class StepOutlet(Protocol):
    """Where a step tells the step after it what happened (the streaming runner's channel)."""

    def opened(self, streaming: bool) -> None:
        """The step is complete already (False: read its file) or runs now (True: chunks follow)."""

    def chunk(self, data: bytes) -> None:
        """One finished chunk's rows, as the JSON lines of the step file, in chunk order."""

    def committed(self) -> None:
        """The step file, its rejects, extra outputs and manifest are written."""


class ChunkTransformer(Protocol):
    """Transforms one step's chunks; made when the step really runs (a skipped step makes none)."""

    in_flight: int  # how many chunks may be transformed at once (``transform`` is then called from threads);
    # read before each chunk starts, so it may change as the step runs (a vLLM window learns the chunk's size)

    def transform(self, chunk: StepChunk) -> tuple[pd.DataFrame | bytes, dict[str, Any]]:
        """The chunk's output rows (or their JSON lines) and its done-marker's counts."""

    def close(self) -> None:
        """The step's last chunk is done (or the step failed)."""


TransformerFactory = Callable[["OperatorCall", int, str], ChunkTransformer]  # (call, step number, fingerprint)


class InProcessTransformer:
    """The operator's chunks in this process (``chunk_processing.run_chunk``); ``model_lock`` is held around each chunk
    (a model shared with another step's thread)."""

    def __init__(
        self,
        call: OperatorCall,
        number: int,
        fingerprint: str,
        model_lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.call = call
        self.model_lock = model_lock or nullcontext()
        operator = call.operator
        self.provenance = provenance_ref(operator, number, fingerprint)
        operator.bind_storage(call.storage)
        operator.prepare(call.storage)

    @property
    def in_flight(self) -> int:
        """The operator's chunks in flight, asked anew before each chunk (its serving may adapt it)."""
        return max(1, self.call.operator.chunks_in_flight())

    def transform(self, chunk: StepChunk) -> tuple[pd.DataFrame, dict[str, Any]]:
        call = self.call
        with self.model_lock:
            return run_chunk(
                call.operator, chunk.frame, chunk.rejects, call.keys, call.storage.media_root, self.provenance
            )

    def close(self) -> None:
        """Nothing to release: the models stay with their operator."""


def identity_of(call: OperatorCall) -> StepIdentity:
    """What produces ``call``'s step (its manifest's operator, fingerprint, params, provenance, extra outputs)."""
    operator = call.operator
    return StepIdentity(
        operator.name,
        operator.fingerprint(call.keys),
        operator.params(),
        operator.provenance(),
        tuple(operator.extra_output_paths()),
    )


def execute_step(
    call: OperatorCall,
    source: Iterable[Chunk] | None = None,
    outlet: StepOutlet | None = None,
    transformer: TransformerFactory = InProcessTransformer,
) -> StepResult:
    """Run ``call`` on its step (or skip it when complete) and return what it did.

    ``source``: the input chunks as the step before streams them (None: read the input file).
    ``transformer``: makes what transforms the chunks (default: the operator in this process).
    """
    operator, storage = call.operator, call.storage
    check_writes([(storage.output_step, storage.input_path, storage.output_path, operator.extra_output_paths())])
    with storage.locked():
        storage.check_writable()
        streamed = source is not None
        if not streamed:
            check_explicit_columns(call)
        step = storage.open_step(identity_of(call), streamed)
        manifest = step.current_manifest()
        if manifest is not None:
            if outlet is not None:
                outlet.opened(False)
                outlet.committed()
            result = _skipped(call, manifest)
        else:
            if outlet is not None:
                outlet.opened(True)
            result = _run_chunks(call, step, source, outlet, transformer)
    log.info(result.describe())
    return result


def _skipped(call: OperatorCall, manifest: StepManifest) -> StepResult:
    stats = manifest.stats
    return StepResult(
        call.storage.output_step,
        call.operator.name,
        str(call.storage.output_path),
        stats.get("rows_in", 0),
        stats.get("rows_out", 0),
        stats.get("rejected", {}),
        stats.get("row_errors", {}),
        skipped=True,
        provenance=manifest.provenance,
        metrics=stats.get("metrics", {}),
    )


def _run_chunks(
    call: OperatorCall,
    step: StepTransaction,
    source: Iterable[Chunk] | None,
    outlet: StepOutlet | None,
    make_transformer: TransformerFactory,
) -> StepResult:
    """Process every chunk not done yet (or whose media or input lines changed since), then commit the step."""
    operator, storage = call.operator, call.storage
    number = storage.output_step
    started = time.perf_counter()
    result = StepResult(number, operator.name, str(storage.output_path), provenance=step.identity.provenance)
    if step.open():
        log.info(f"step {number} {operator.name}: resuming after {step.resumed} completed chunk(s)")
    total = None if source is not None else count_rows(storage.input_path, storage.input_type)
    progress = StepProgress(f"step {number} {operator.name}", total)
    previous = step.previous_rows()
    if previous is not None:
        log.info(f"step {number} {operator.name}: {len(previous.rows)} row(s) computed before; only the others run")
    reusing = ReusingTransformer(
        make_transformer(call, number, step.identity.fingerprint), call, previous, storage.retry_failed
    )
    transformer: ChunkTransformer = reusing

    def finish(chunk: StepChunk, done: Future | None) -> None:
        """In chunk order: the chunk's rows and marker written, then handed on."""
        if done is not None:
            step.write(chunk, *done.result())
        if outlet is not None:
            outlet.chunk(step.data(chunk.index))
        progress.update(len(chunk.frame) + len(chunk.rejects))

    pool: ThreadPoolExecutor | None = None  # made once a second chunk may be in flight

    def start(chunk: StepChunk) -> Future | None:
        """The chunk's transform: None when it is done already, else running (pool) or finished."""
        nonlocal pool
        if chunk.done is not None:
            return None
        if pool is None and transformer.in_flight > 1:
            pool = ThreadPoolExecutor(MAX_CHUNKS_IN_FLIGHT, thread_name_prefix="dfmm-chunk")
        if pool is not None:
            return pool.submit(working_on_chunk, chunk.index, transformer.transform, chunk)
        done: Future = Future()
        done.set_result(working_on_chunk(chunk.index, transformer.transform, chunk))
        return done

    waiting: deque[tuple[StepChunk, Future | None]] = deque()
    try:
        for chunk in step.chunks(source):
            waiting.append((chunk, start(chunk)))
            while waiting:
                head = waiting[0][1]
                if head is None or head.done():
                    finish(*waiting.popleft())
                    continue
                allowed = min(MAX_CHUNKS_IN_FLIGHT, max(1, transformer.in_flight))
                running = [done for _, done in waiting if done is not None and not done.done()]
                if len(running) < allowed and len(waiting) < min(MAX_CHUNKS_IN_FLIGHT, 2 * allowed):
                    break  # room for another chunk: one answered before the head waits only to be written
                # Until a chunk finishes; the transformer may allow more meanwhile (a vLLM window learns chunk sizes).
                wait_futures(running, timeout=IN_FLIGHT_RECHECK_S, return_when=FIRST_COMPLETED)
        while waiting:
            finish(*waiting.popleft())
    except RunStoppedError:
        _keep_finished(step, waiting)
        log.warning(f"step {number} {operator.name}: stopped; the chunks finished are kept, the others stay pending")
        raise
    finally:
        if pool is not None:
            for _, done in waiting:
                if done is not None:
                    done.cancel()
            pool.shutdown(wait=True)
        progress.close()
        transformer.close()
    totals, rejects = step.totals()
    result.rows_in, result.rows_out = totals.rows_in, totals.rows_out
    result.rejected, result.row_errors, result.metrics = totals.rejected, totals.row_errors, totals.metrics
    result.seconds = time.perf_counter() - started
    result.rows_reused, result.rows_computed = reusing.rows_reused, reusing.rows_computed
    step.commit(result.to_dict(), rejects)
    result.seconds = time.perf_counter() - started
    if outlet is not None:
        outlet.committed()
    return result


def _keep_finished(step: StepTransaction, waiting: deque[tuple[StepChunk, Future | None]]) -> None:
    """After a stop: the chunks whose transform finished are written (a rerun takes them from their parts)."""
    for chunk, done in waiting:
        if done is None or done.cancel():
            continue
        try:
            step.write(chunk, *done.result())
        except Exception:  # this chunk stopped too: it stays to do
            continue


def check_explicit_columns(call: OperatorCall) -> None:
    """A column the caller named explicitly must exist in some row (also when ``forward()`` runs uncompiled)."""
    storage = call.storage
    for key in call.operator.explicit_input_columns(**call.keys):
        columns: list[str] = []
        for chunk in storage.iter_chunks():
            if key in chunk.frame.columns:
                break
            columns += [str(c) for c in chunk.frame.columns if c not in columns]
        else:
            raise PipelineCompileError(
                f"{call.operator.name} (reads '{storage.input_path}'): input key '{key}' exists in no row. "
                f"Available: {columns}"
            )
