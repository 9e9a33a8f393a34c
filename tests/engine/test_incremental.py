"""Only new rows cost anything: rows appended, inserted, deleted or reordered in the input are the only ones a
rerun sends (requests counted at the fake OpenAI server), and the step file equals a clean run's on the new
input. A server stopped mid-run and restarted: the rerun answers every row and re-sends only the failed ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator
from dataflow_mm.common.errors import RunStoppedError
from dataflow_mm.serving.api_serving import APIVLMServing_openai
from tests.support.openai_test_requests import Fault
from tests.support.openai_test_server import OpenAITestServer
from tests.support.sample_data import write_jsonl

pytest.importorskip("httpx")

ROWS = 40


class Answers(PipelineABC):
    """Step 1 answers each row's prompt on the API backend; step 2 asks about the answer."""

    def __init__(self, table: Path, cache: Path, url: str) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="a", chunk_size=8)
        serving = APIVLMServing_openai(
            url, "test-model", api_key_env=None, max_workers=4, max_retries=1, backoff_base=0.0
        )
        self.ask = PromptedVQAGenerator(serving)
        self.follow = PromptedVQAGenerator(serving, system_prompt="follow up")

    def forward(self) -> None:
        self.ask.run(self.storage.step(), input_image_key=None)
        self.follow.run(self.storage.step(), input_image_key=None, input_prompt_key="answer", output_answer_key="more")


def rows(ids: list[int]) -> list[dict[str, Any]]:
    return [{"id": i, "prompt": f"row {i}"} for i in ids]


def run(table: Path, cache: Path, server: OpenAITestServer, runner: Any = None) -> Any:
    return Answers(table, cache, server.base_url).run(runner)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sent(server: OpenAITestServer, before: int) -> int:
    return server.requests.total - before


EDITS: dict[str, tuple[Callable[[list[int]], list[int]], int]] = {
    # name: (new ids from the old ones, rows that are new)
    "appended": (lambda ids: [*ids, 100, 101, 102], 3),
    "inserted": (lambda ids: [*ids[:5], 100, *ids[5:17], 101, *ids[17:]], 2),
    "reordered": (lambda ids: ids[::-1], 0),
    "deleted and reordered": (lambda ids: [i for i in ids if i % 3][::-1], 0),
    "all at once": (lambda ids: [100, *[i for i in ids if i % 5][::-1], 101], 2),
}


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer() as running:
        yield running


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_changed_table_costs_only_its_new_rows(tmp_path: Path, server: OpenAITestServer, edit: str) -> None:
    change, new = EDITS[edit]
    ids = list(range(ROWS))
    table = write_jsonl(tmp_path / "in.jsonl", rows(ids))
    cache = tmp_path / "cache"
    start = server.requests.total
    run(table, cache, server)
    assert sent(server, start) == 2 * ROWS

    write_jsonl(table, rows(change(ids)))
    start = server.requests.total
    summary = run(table, cache, server)
    assert sent(server, start) == 2 * new  # each new row once per step, nothing else
    assert summary.complete
    clean = tmp_path / "clean"
    run(table, clean, server)
    for name in ("a_step1.jsonl", "a_step2.jsonl"):
        assert (cache / name).read_bytes() == (clean / name).read_bytes()


def test_a_server_stopped_mid_run_and_restarted(tmp_path: Path) -> None:
    """The server goes away after 13 answers: the run stops (the breaker), keeping every answer; once the
    server is back, the same run sends exactly the requests not answered yet and ends equal to a clean run."""
    table = write_jsonl(tmp_path / "in.jsonl", rows(list(range(ROWS))))
    cache = tmp_path / "cache"
    gone = OpenAITestServer(plan=[None] * 13 + [Fault.close()] * 1000).start()
    try:
        port = gone.port
        with pytest.raises(RunStoppedError):
            run(table, cache, gone)
        answered = sum(1 for r in gone.requests if r.status == 200)
        asked_in_step2 = {r.text for r in gone.requests_for("answer to:")}
        step1_answers = {f"answer to: {r.text}" for r in gone.requests if r.status == 200}
    finally:
        gone.close()
    assert answered == 13
    assert asked_in_step2 <= step1_answers  # step 2 was never sent a row step 1 left pending

    with OpenAITestServer(port=port) as back:
        summary = run(table, cache, back)
        total = back.requests.total
    assert summary.complete
    assert total == 2 * ROWS - answered  # every answer of the stopped run kept; each other request sent once
    assert sum(step.rows_computed for step in summary.steps) == total  # one row computed per request
    with OpenAITestServer(port=port) as clean_server:
        run(table, tmp_path / "clean", clean_server)
    for name in ("a_step1.jsonl", "a_step2.jsonl"):
        assert (cache / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_ray_runner_rerun_sends_only_pending_and_new_rows(tmp_path: Path, ray_cluster: Any) -> None:
    from dataflow_mm.engine.ray_runner import RayRunner

    ids = list(range(24))
    table = write_jsonl(tmp_path / "in.jsonl", rows(ids))
    cache = tmp_path / "cache"
    gone = OpenAITestServer(faults_by_text={"row 7": Fault.close(times=1000)}).start()
    try:
        port = gone.port
        summary = run(table, cache, gone, RayRunner())
    finally:
        gone.close()
    assert summary.outcomes["step1"] == {"done": 23, "failed": 0, "pending": 1}
    write_jsonl(table, rows([*ids, 50]))
    with OpenAITestServer(port=port) as back:
        summary = run(table, cache, back, RayRunner())
        assert back.requests.total == 4  # rows 7 and 50, in each step
    assert summary.complete
    with OpenAITestServer(port=port) as clean_server:
        run(table, tmp_path / "clean", clean_server)
    for name in ("a_step1.jsonl", "a_step2.jsonl"):
        assert (cache / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
