"""PipelineABC: a ``forward()`` that calls operators on storage steps, compiled before it runs.

``compile()`` runs ``forward()`` in recording mode: no operator executes and no model loads,
but every call's input keys are checked against the columns that exist at its step, and all
mismatches are reported at once. ``run()`` compiles, executes ``forward()`` (completed steps are
skipped through their manifests) and prints the summary.
"""

from __future__ import annotations

import difflib
import os
from abc import ABC, abstractmethod
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from dataflow_mm.common.errors import ERROR_COLUMN, PipelineCompileError, RunStoppedError, StorageError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.dispatch import recording_calls
from dataflow_mm.core.operator import OperatorCall
from dataflow_mm.pipeline.run_log import run_log
from dataflow_mm.pipeline.summary import RunSummary
from dataflow_mm.report import report_after_run
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.storage.file_storage import planning_outputs
from dataflow_mm.storage.formats import find_columns, has_records, iter_table, peek_columns
from dataflow_mm.storage.paths import same_file, write_conflicts
from dataflow_mm.storage.step_owner import cache_file_kind, foreign_step, writer_of

if TYPE_CHECKING:
    from dataflow_mm.engine.runner import Runner

log = get_logger("pipeline")


def _key(path: os.PathLike | str) -> str:
    return os.path.abspath(os.fspath(path))


def _missing_key_message(index: int, call: OperatorCall, key: str, columns: list[str]) -> str:
    close = difflib.get_close_matches(key, columns, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"operator #{index + 1} {call.operator.name} (reads step {max(call.storage.operator_step, 0)}, "
        f"'{call.storage.input_path}'): input key '{key}' is not a column there.{hint} "
        f"Available: {columns}"
    )


def _in_any_row(call: OperatorCall, key: str, known: dict[str, list[str] | None]) -> bool:
    """Whether ``key`` is a column of any row of the user's file the call reads (beyond the peeked rows)."""
    path = call.storage.input_path
    if _key(path) in known or not os.path.isfile(path):
        return False
    return any(key in chunk.frame.columns for chunk in iter_table(path, call.storage.input_type))


def step_file_problems(calls: list[OperatorCall]) -> list[str]:
    """Step files of another writer the calls would replace, and extra outputs that name a file a cache writes."""
    problems: list[str] = []
    foreign = [
        problem
        for call in calls
        if hasattr(call.storage, "pipeline_name")
        and (problem := foreign_step(call.storage.output_path, writer_of(call.storage)))
    ]
    if foreign:  # one story: the first step file says it, the count says how far it goes
        more = f" ({len(foreign) - 1} more step file(s) of that run too)" if len(foreign) > 1 else ""
        problems.append(foreign[0] + more)
    caches = {os.path.abspath(c.storage.cache_path) for c in calls if hasattr(c.storage, "cache_path")}
    steps = [p for c in calls for p in (c.storage.input_path, c.storage.output_path)]
    for call in calls:
        for extra in call.operator.extra_output_paths():
            if any(same_file(extra, step) for step in steps):
                continue  # write_conflicts says it already
            for cache in sorted(caches):
                kind = cache_file_kind(extra, cache)
                if kind:
                    problems.append(
                        f"operator {call.operator.name}'s extra output '{extra}' is {kind} of cache '{cache}': "
                        "a cache's own files are never written as extra outputs; choose another path"
                    )
    return problems


class PipelineABC(ABC):
    """Base class of pipelines: subclass it and write ``__init__`` (operators, storage) and ``forward``."""

    @abstractmethod
    def forward(self) -> None:
        """Call each operator's ``run`` on the next storage step."""

    def compile(self) -> list[OperatorCall]:
        """Record the operator calls of ``forward`` and check them, before any model is loaded."""
        with recording_calls() as calls, planning_outputs():  # later storages may read planned extra outputs
            self.forward()
        for call in calls:
            call.storage.reset()
            claim = getattr(call.storage, "claim_for_pipeline", None)
            if claim is not None:
                claim(type(self).__qualname__)
        for call in calls:  # e.g. a vllm serving where vllm is not installed: stop before step 1 writes
            call.operator.check_dependencies()
        problems: list[str] = write_conflicts(
            [
                (
                    max(c.storage.operator_step, 0) + 1,
                    c.storage.input_path,
                    c.storage.output_path,
                    c.operator.extra_output_paths(),
                )
                for c in calls
            ]
        )
        problems += step_file_problems(calls)
        for call in calls:
            call.storage.check_writable()
        known: dict[str, list[str] | None] = {}
        for index, call in enumerate(calls):
            columns = self._columns_at(call, known, problems)
            if columns is not None:
                problems += [
                    _missing_key_message(index, call, key, columns)
                    for key in call.operator.input_columns(**call.keys)
                    if key not in columns
                ]
                problems += [
                    _missing_key_message(index, call, key, columns)
                    for key in call.operator.explicit_input_columns(**call.keys)
                    if key not in columns and not _in_any_row(call, key, known)
                ]
            produced = (
                None
                if columns is None
                else list(dict.fromkeys([*columns, ERROR_COLUMN, *call.operator.output_columns(**call.keys)]))
            )
            for path in [call.storage.output_path, *call.operator.extra_output_paths()]:
                known[_key(path)] = produced
        if len(problems) == 1:  # one problem, one line
            raise PipelineCompileError(f"The pipeline cannot run (found before loading any model): {problems[0]}")
        if problems:
            raise PipelineCompileError(
                f"The pipeline cannot run: {len(problems)} problem(s) found before loading any model:\n  - "
                + "\n  - ".join(problems)
            )
        self._compiled_calls = calls
        log.info(f"compiled {type(self).__name__}: {len(calls)} operator(s), keys check out")
        return calls

    @staticmethod
    def _columns_at(call: OperatorCall, known: dict[str, list[str] | None], problems: list[str]) -> list[str] | None:
        path = call.storage.input_path
        if _key(path) in known:
            return known[_key(path)]
        try:
            columns = peek_columns(path, call.storage.input_type)
        except StorageError as exc:
            problems.append(f"operator {call.operator.name}: {exc}")
            return None
        if not columns:
            if not has_records(path, call.storage.input_type):
                problems.append(f"operator {call.operator.name}: input file '{path}' is empty: nothing to do")
            return None
        unseen = [key for key in call.operator.input_columns(**call.keys) if key not in columns]
        if unseen:  # a column may first appear after the rows peeked at: look through the whole table
            try:
                columns += find_columns(path, unseen, call.storage.input_type)
            except StorageError as exc:
                problems.append(f"operator {call.operator.name}: {exc}")
                return None
        return columns

    def servings(self) -> list[VLMServing]:
        """The distinct serving backends the compiled operators use (for the summary)."""
        found: dict[int, VLMServing] = {}
        for call in getattr(self, "_compiled_calls", []):
            serving = getattr(call.operator, "serving", None)
            if isinstance(serving, VLMServing):
                found[id(serving)] = serving
        return list(found.values())

    def run(self, runner: Runner | str | None = None) -> RunSummary:
        """Compile, execute on ``runner`` (default: in-process), print, save and return the summary.

        ``runner`` is a Runner or a name: "local" (in this process) or "ray" (Ray tasks and actors).
        """
        from dataflow_mm.engine import get_runner

        calls = self.compile()
        with ExitStack() as held:  # one run per cache folder, for the whole run (see storage.lock)
            folders = {os.path.abspath(c.storage.cache_path): c.storage for c in calls}
            for folder in sorted(folders):  # one order everywhere: two runs never hold one lock each
                held.enter_context(folders[folder].locked())
            logged = held.enter_context(run_log(calls[-1].storage.cache_path)) if calls else None
            last = calls[-1].storage if calls else None
            summary_path = os.path.join(last.cache_path, f"{last.file_name_prefix}_summary.json") if last else ""
            try:
                results = get_runner(runner).execute(calls)
            except RunStoppedError:  # the last run's summary would tell of a run that is not this one
                if summary_path:
                    Path(summary_path).unlink(missing_ok=True)
                raise
            summary = RunSummary(results, self.servings(), log_path=str(logged.path) if logged else None)
            if summary_path:
                summary.save(summary_path)
            print(summary.text(), flush=True)
            if logged:
                logged.write(summary.text())
            report_after_run(calls[-1].storage if calls else None)
        return summary
