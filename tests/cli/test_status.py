"""`dataflowmm status CACHE`: per step rows done / failed / pending, complete or not, what a rerun would do;
the HTML report shows the same counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator
from dataflow_mm.cli.main import main
from dataflow_mm.common.errors import RunStoppedError
from dataflow_mm.report import write_report
from tests.support.flaky_serving import FlakyServing
from tests.support.sample_data import write_jsonl


class Answers(PipelineABC):
    def __init__(self, table: Path, cache: Path, serving: FlakyServing) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="s", chunk_size=3)
        self.ask = PromptedVQAGenerator(serving)

    def forward(self) -> None:
        self.ask.run(self.storage.step(), input_image_key=None)


def write(tmp_path: Path, rows: int) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"row {i}"} for i in range(rows)])


def status(capsys: pytest.CaptureFixture, cache: Path, *flags: str) -> tuple[int, str]:
    code = main(["status", str(cache), *flags])
    return code, capsys.readouterr().out


def test_status_tells_pending_complete_and_changed_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table, cache = write(tmp_path, 9), tmp_path / "cache"
    Answers(table, cache, FlakyServing(down=lambda p: p.endswith(("row 1", "row 4")))).run()
    capsys.readouterr()
    code, out = status(capsys, cache)
    assert code == 3
    assert "INCOMPLETE" in out and "7 done, 0 failed, 2 pending" in out and "sends the 2 pending row(s)" in out
    code, out = status(capsys, cache, "--json")
    data = json.loads(out)
    assert code == 3 and not data["complete"]
    assert [(s["step"], s["done"], s["failed"], s["pending"], s["state"]) for s in data["steps"]] == [
        (1, 7, 0, 2, "incomplete")
    ]
    report = write_report(cache)
    html = report.read_text(encoding="utf-8")
    assert "<td>7</td><td>0</td><td>2</td>" in html and "INCOMPLETE" in html

    Answers(table, cache, FlakyServing(fail_when=lambda p: p.endswith("row 4"))).run()  # a pending row fails
    capsys.readouterr()
    code, out = status(capsys, cache)
    assert code == 0 and "complete (a rerun skips every step)" in out
    assert "8 done, 1 failed, 0 pending" in out and "--retry_failed redoes its 1 failed row(s)" in out

    write(tmp_path, 10)
    code, out = status(capsys, cache)
    assert code == 3 and "input changed" in out and "only the rows it has not computed" in out


def test_status_of_a_stopped_run_and_of_no_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table, cache = write(tmp_path, 9), tmp_path / "cache"
    with pytest.raises(RunStoppedError):
        Answers(table, cache, FlakyServing(stop_after=3)).run()
    capsys.readouterr()
    code, out = status(capsys, cache)
    assert code == 3 and "interrupted (3 done, 0 failed, 0 pending)" in out
    assert "resumes after the 1 chunk(s) finished" in out
    code = main(["status", str(tmp_path / "nowhere")])
    assert code == 2 and "No such cache folder" in capsys.readouterr().err
