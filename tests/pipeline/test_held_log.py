"""A script's set-up log lines wait for its run log: none before a user error, all at the log file's start."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataflow_mm.common.errors import UserError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.pipeline.held_log import holding_setup_log, release_held_log
from tests.support.sample_data import write_region_caption_table

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
FALLBACK = "Falling back to a locally built tiny random-weight"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def seen() -> _Lines:
    handler = _Lines()
    get_logger().addHandler(handler)
    yield handler
    get_logger().removeHandler(handler)


def test_held_lines_vanish_before_a_user_error(seen: _Lines) -> None:
    with pytest.raises(UserError), holding_setup_log():
        get_logger("x").warning("fallback")
        assert seen.lines == []  # held, not printed
        raise UserError("input missing")
    assert seen.lines == []
    get_logger("x").warning("after")
    assert seen.lines == ["after"]  # the handlers are back


def test_held_lines_are_printed_after_any_other_end(seen: _Lines) -> None:
    with pytest.raises(RuntimeError), holding_setup_log():
        get_logger("x").warning("fallback")
        raise RuntimeError("a bug: the traceback follows the lines that led to it")
    assert seen.lines == ["fallback"]
    with holding_setup_log():
        get_logger("x").info("set-up")
    assert seen.lines == ["fallback", "set-up"]


def test_release_replays_into_the_run_log_first_and_once(seen: _Lines) -> None:
    run_log = _Lines()
    with holding_setup_log():
        get_logger("x").warning("fallback")
        release_held_log(also=run_log)
        get_logger("x").info("step 1")
    assert run_log.lines == ["fallback"]
    assert seen.lines == ["fallback", "step 1"]


def _run(args: list[str], cwd: Path, tiny_models_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DATAFLOW_MM_TINY_DIR": str(tiny_models_dir)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--max_tokens", "8", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_input_prints_one_line_without_the_fallback_warnings(
    tmp_path: Path, tiny_qwen_dir: Path, tiny_models_dir: Path
) -> None:
    done = _run(["--first_entry_file", "no_such.jsonl", "--cache_path", str(tmp_path / "c")], tmp_path, tiny_models_dir)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: The pipeline cannot run (found before loading any model): operator ImageBboxGenerator: "
        "Input file does not exist: 'no_such.jsonl'"
    ]


def test_the_run_log_starts_before_the_first_warning(
    tmp_path: Path, tiny_qwen_dir: Path, tiny_models_dir: Path
) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2, size=(96, 64), n_boxes=1)
    done = _run(["--first_entry_file", str(table), "--cache_path", str(tmp_path / "c")], tmp_path, tiny_models_dir)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(FALLBACK) == 1  # printed once, not again when replayed
    (log,) = (tmp_path / "c" / "logs").glob("*.log")
    lines = log.read_text().splitlines()
    first_warning = next(i for i, line in enumerate(lines) if "| WARNING |" in line)
    assert "is not available" in lines[first_warning] and FALLBACK in lines[first_warning + 1]
    assert first_warning < next(i for i, line in enumerate(lines) if "step 1 ImageBboxGenerator" in line)
