"""Exit codes that tell the truth, run as a user runs them (subprocesses): 0 complete, 2 usage, 3 incomplete
(rows pending, or the run stopped), 4 more rows failed for good than ``--max_failed_rows`` allows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dataflow_mm.common.errors import EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_USAGE
from dataflow_mm.pipeline.outcome import EXIT_TOO_MANY_FAILED
from tests.support.openai_test_requests import Fault
from tests.support.openai_test_server import OpenAITestServer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
IMAGES = REPO / "data" / "image_region_caption"

# A pipeline script as a user writes one: its serving leaves some rows pending ("down") or stops the run.
FLAKY = textwrap.dedent(
    """
    import sys
    from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator
    from dataflow_mm.pipeline.outcome import check_outcome
    from dataflow_mm.pipeline.script import run_main
    from tests.support.flaky_serving import FlakyServing

    table, cache, mode = sys.argv[1:4]
    serving = FlakyServing(
        down=(lambda prompt: prompt.endswith("row 1")) if mode == "down" else None,
        stop_after=2 if mode == "stop" else None,
    )

    class Answers(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(table, cache_path=cache, file_name_prefix="x", chunk_size=2)
            self.ask = PromptedVQAGenerator(serving)

        def forward(self):
            self.ask.run(self.storage.step(), input_image_key=None)

    def main():
        check_outcome(Answers().run())
        print("sent", serving.requests)

    run_main(main)
    """
)


def env() -> dict[str, str]:
    variables = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for name in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        variables.pop(name, None)
    return variables


def flaky(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    table = tmp_path / "in.jsonl"
    if not table.exists():
        table.write_text("".join(json.dumps({"id": i, "prompt": f"row {i}"}) + "\n" for i in range(5)))
    cmd = [sys.executable, str(script), str(table), str(tmp_path / "cache"), mode]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)


def test_pending_rows_exit_3_and_the_rerun_exits_0(tmp_path: Path) -> None:
    proc = flaky(tmp_path, "down")
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "incomplete" in last and "rerun the same command to continue" in last and "Traceback" not in proc.stderr
    assert "run INCOMPLETE" in proc.stdout
    proc = flaky(tmp_path, "up")
    assert proc.returncode == EXIT_COMPLETE, proc.stderr[-2000:]
    assert "sent 1" in proc.stdout and "run complete" in proc.stdout


def test_a_stopped_run_exits_3_and_the_rerun_finishes(tmp_path: Path) -> None:
    proc = flaky(tmp_path, "stop")
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("stopped: the fake server stopped answering")
    proc = flaky(tmp_path, "up")
    assert proc.returncode == EXIT_COMPLETE and "sent 3" in proc.stdout  # 5 rows, 2 answered before the stop


def run_script(server: OpenAITestServer, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    first_entry = tmp_path / "in.jsonl"
    rows = [
        {"image": str(IMAGES / name), "bbox": [[40 + shift, 40, 120, 100]]}
        for name in ("street.jpg", "park.jpg")
        for shift in (0, 5)
    ]
    first_entry.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [
        sys.executable, str(SCRIPT),
        "--backend", "api", "--api_url", server.base_url, "--model_name", "test-model",
        "--first_entry_file", str(first_entry), "--cache_path", str(tmp_path / "cache"), "--file_name_prefix", "rc",
        "--api_max_retries", "0", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)


def test_the_script_exits_0_when_complete_and_4_past_max_failed_rows(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    with OpenAITestServer(plan=[None, Fault.http(400, message="bad request")]) as server:  # one row fails for good
        proc = run_script(server, tmp_path)
        assert proc.returncode == EXIT_COMPLETE, proc.stderr[-3000:]
        assert "run complete" in proc.stdout and "1 failed" in proc.stdout
        proc = run_script(server, tmp_path, "--max_failed_rows", "0")
        assert proc.returncode == EXIT_TOO_MANY_FAILED, proc.stderr[-3000:]
        assert "too many rows failed" in proc.stderr.strip().splitlines()[-1]
        assert server.requests.total == 4  # the rerun skipped every complete step: nothing sent again
        proc = run_script(server, tmp_path, "--max_failed_fraction", "0.5")
        assert proc.returncode == EXIT_COMPLETE, proc.stderr[-3000:]
        proc = run_script(server, tmp_path, "--retry_failed", "--max_failed_rows", "0")
        assert proc.returncode == EXIT_COMPLETE, proc.stderr[-3000:]
        assert server.requests.total == 5  # only the failed row was sent again


def test_the_script_exits_2_on_a_bad_flag_and_documents_its_codes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--max_failed_rows", "many"], env=env(), capture_output=True, text=True
    )
    assert proc.returncode == EXIT_USAGE
    proc = subprocess.run([sys.executable, str(SCRIPT), "-h"], env=env(), capture_output=True, text=True)
    assert proc.returncode == 0
    for code in ("0  complete", "2  usage", "3  incomplete", "4  complete, but more rows failed"):
        assert code in proc.stdout
    assert "--retry_failed" in proc.stdout and "--max_failed_fraction" in proc.stdout


def test_the_script_exits_3_when_the_server_drops_requests(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    with OpenAITestServer(plan=[Fault.close()]) as server:
        proc = run_script(server, tmp_path)
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr[-3000:]
