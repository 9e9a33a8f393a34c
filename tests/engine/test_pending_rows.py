"""Pending rows: a step with rows the serving did not answer is not complete, the steps after it do not
process those rows, and rerunning the same pipeline sends exactly those rows (done rows stay byte for byte).

The serving is ``FlakyServing``: "down" for chosen prompts (their rows come back ``ServingUnavailableError``,
as the API backend reports a server that does not answer), or raising ``RunStoppedError`` after N requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator
from dataflow_mm.common.errors import RunStoppedError, row_outcome
from dataflow_mm.engine import LocalRunner
from dataflow_mm.pipeline.outcome import EXIT_TOO_MANY_FAILED, outcome_error
from dataflow_mm.storage.cache_status import cache_status
from dataflow_mm.storage.manifest import StepManifest
from dataflow_mm.storage.row_index import iter_row_index, rows_path
from tests.support.flaky_serving import FlakyServing
from tests.support.sample_data import write_jsonl

ROWS = 12
DOWN = {"row 2", "row 5", "row 11"}


class TwoSteps(PipelineABC):
    """Step 1 answers each row's prompt; step 2 asks about step 1's answer (so it depends on it)."""

    def __init__(self, table: Path, cache: Path, first: FlakyServing, second: FlakyServing, **storage: Any) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="p", chunk_size=4, **storage)
        self.ask = PromptedVQAGenerator(first)
        self.follow = PromptedVQAGenerator(second, system_prompt="follow up")

    def forward(self) -> None:
        self.ask.run(self.storage.step(), input_image_key=None)
        self.follow.run(self.storage.step(), input_image_key=None, input_prompt_key="answer", output_answer_key="more")


def table(folder: Path, rows: int = ROWS) -> Path:
    return write_jsonl(folder / "table.jsonl", [{"id": i, "prompt": f"row {i}"} for i in range(rows)])


def is_down(prompt: str) -> bool:
    return any(prompt.endswith(text) for text in DOWN)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(
    table_path: Path, cache: Path, first: FlakyServing, second: FlakyServing, streaming: bool = True, **storage: Any
) -> Any:
    return TwoSteps(table_path, cache, first, second, **storage).run(LocalRunner(streaming=streaming))


@pytest.mark.parametrize("streaming", [True, False])
def test_pending_rows_make_an_incomplete_run_and_the_rerun_sends_only_them(tmp_path: Path, streaming: bool) -> None:
    source = table(tmp_path)
    cache = tmp_path / "cache"
    first, second = FlakyServing(down=is_down), FlakyServing()
    summary = run(source, cache, first, second, streaming)

    assert first.requests == ROWS
    assert not summary.complete
    assert summary.outcomes == {
        "step1": {"done": ROWS - 3, "failed": 0, "pending": 3},
        "step2": {"done": ROWS - 3, "failed": 0, "pending": 3},
    }
    error = outcome_error(summary)
    assert error is not None and error.exit_code == 3 and "rerun the same command" in str(error)
    # Step 2 never processed the rows step 1 left pending: it was sent only the answered ones.
    assert second.requests == ROWS - 3
    assert not any("row 2" in prompt for prompt in second.sent)
    step2 = read(cache / "p_step2.jsonl")
    pending = [row for row in step2 if row_outcome(row.get("error")) == "pending"]
    assert sorted(row["id"] for row in pending) == [2, 5, 11]
    assert all(row.get("more") is None for row in pending)
    # The manifests say the steps are not complete; so does the status.
    assert StepManifest.load(cache / "p_step1.jsonl").stats["rows_pending"] == 3
    status = cache_status(cache)
    assert not status.complete and [s.pending for s in status.steps] == [3, 3]
    assert "pending" in status.steps[0].rerun
    old_lines = (cache / "p_step2.jsonl").read_bytes().splitlines()
    kept = {row["id"]: line for row, line in zip(step2, old_lines, strict=True)}

    first, second = FlakyServing(), FlakyServing()
    summary = run(source, cache, first, second, streaming)
    assert summary.complete and outcome_error(summary) is None
    assert sorted(first.sent) == sorted(f"You are a helpful assistant. row {i}" for i in (2, 5, 11))
    assert second.requests == 3  # only the rows whose step-1 answer is new
    assert [s.rows_reused for s in summary.steps] == [ROWS - 3, ROWS - 3]
    lines = (cache / "p_step2.jsonl").read_bytes().splitlines()
    for row, line in zip(read(cache / "p_step2.jsonl"), lines, strict=True):
        if row["id"] not in (2, 5, 11):
            assert line == kept[row["id"]]  # done rows are byte-identical

    clean = tmp_path / "clean"
    run(source, clean, FlakyServing(), FlakyServing())
    for name in ("p_step1.jsonl", "p_step2.jsonl"):
        assert (cache / name).read_bytes() == (clean / name).read_bytes()
        assert rows_path(cache / name).read_bytes() == rows_path(clean / name).read_bytes()
    assert cache_status(cache).complete

    first, second = FlakyServing(), FlakyServing()
    assert run(source, cache, first, second).steps[0].skipped
    assert first.requests == second.requests == 0


def test_failed_rows_are_final_unless_retry_failed(tmp_path: Path) -> None:
    source = table(tmp_path)
    cache = tmp_path / "cache"
    first = FlakyServing(fail_when=lambda prompt: prompt.endswith("row 7"))
    summary = run(source, cache, first, FlakyServing())
    assert summary.complete and summary.outcomes["step1"] == {"done": ROWS - 1, "failed": 1, "pending": 0}
    assert outcome_error(summary) is None
    error = outcome_error(summary, max_failed_rows=0)
    assert error is not None and error.exit_code == EXIT_TOO_MANY_FAILED
    assert outcome_error(summary, max_failed_fraction=0.5) is None

    first, second = FlakyServing(), FlakyServing()
    assert all(step.skipped for step in run(source, cache, first, second).steps)
    assert first.requests == 0
    assert "--retry_failed" in cache_status(cache).steps[0].rerun

    first, second = FlakyServing(), FlakyServing()
    summary = run(source, cache, first, second, retry_failed=True)
    assert list(first.sent) == ["You are a helpful assistant. row 7"]
    assert second.requests == 1  # the failed row passed through step 2 untouched; now it has an answer
    assert summary.outcomes["step1"] == {"done": ROWS, "failed": 0, "pending": 0}


def test_a_stopped_run_keeps_its_finished_chunks_and_the_rerun_finishes(tmp_path: Path) -> None:
    source = table(tmp_path)
    cache = tmp_path / "cache"
    first = FlakyServing(stop_after=8)  # chunks of 4: two chunks answered, the third stops the run
    cache.mkdir()
    (cache / "p_summary.json").write_text('{"complete": true}')  # an earlier run's summary
    with pytest.raises(RunStoppedError):
        run(
            source,
            cache,
            first,
            FlakyServing(),
        )
    assert first.requests == 8
    assert not (cache / "p_step1.jsonl").exists()
    assert not (cache / "p_summary.json").exists()  # it told of another run
    status = cache_status(cache)
    assert status.steps[0].state == "interrupted" and status.steps[0].done == 8 and not status.complete

    first = FlakyServing()
    summary = run(source, cache, first, FlakyServing())
    assert first.requests == ROWS - 8 and summary.complete
    clean = tmp_path / "clean"
    run(source, clean, FlakyServing(), FlakyServing())
    assert (cache / "p_step2.jsonl").read_bytes() == (clean / "p_step2.jsonl").read_bytes()


def test_row_index_records_every_input_row_once_with_its_outcome(tmp_path: Path) -> None:
    source = table(tmp_path)
    run(source, tmp_path / "cache", FlakyServing(down=is_down), FlakyServing())
    records = list(iter_row_index(tmp_path / "cache" / "p_step1.jsonl"))
    assert len(records) == ROWS and len({key for key, _, _ in records}) == ROWS
    assert [outcome for _, outcome, _ in records].count("pending") == 3
    assert all(lines == 1 for _, _, lines in records)


@pytest.mark.parametrize("cache_type", ["parquet", "csv"])
def test_a_step_file_of_another_type_reuses_its_rows_too(tmp_path: Path, cache_type: str) -> None:
    source = table(tmp_path)
    cache = tmp_path / "cache"
    run(source, cache, FlakyServing(down=is_down), FlakyServing(), cache_type=cache_type)
    assert (cache / f"p_step1.{cache_type}.lines.ndjson").is_file()  # the output lines the next run reuses
    first, second = FlakyServing(), FlakyServing()
    summary = run(source, cache, first, second, cache_type=cache_type)
    assert summary.complete and first.requests == 3 and second.requests == 3
    clean = tmp_path / "clean"
    run(source, clean, FlakyServing(), FlakyServing(), cache_type=cache_type)
    for name in (f"p_step1.{cache_type}", f"p_step2.{cache_type}"):
        assert (cache / name).read_bytes() == (clean / name).read_bytes()
