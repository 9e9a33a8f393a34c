"""A cache whose ``logs`` cannot hold the run log: the run goes on without the file and says so (issue 24, 12).

It used to stop with a ``PermissionError`` (or ``FileExistsError``) traceback before the first step.
``logs`` as a read-only folder needs a user other than root; ``logs`` as a file fails the same way for anyone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.openai_test_server import OpenAITestServer

pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
IMAGES = REPO / "data" / "image_region_caption"


def _spoil(logs: Path, how: str) -> None:
    if how == "file":
        logs.write_text("not a folder\n")
    else:
        logs.mkdir()
        logs.chmod(0o555)


@pytest.mark.parametrize("how", ["file", "read-only folder"])
def test_a_run_log_that_cannot_be_written_is_a_warning_not_a_crash(tmp_path: Path, how: str) -> None:
    if how == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder")
    cache = tmp_path / "cache"
    cache.mkdir()
    _spoil(cache / "logs", how)
    first_entry = tmp_path / "in.jsonl"
    first_entry.write_text(json.dumps({"image": str(IMAGES / "park.jpg"), "bbox": [[40, 40, 120, 100]]}) + "\n")
    with OpenAITestServer() as server:
        cmd = [
            sys.executable, str(SCRIPT), "--backend", "api", "--api_url", server.base_url, "--model_name", "m",
            "--first_entry_file", str(first_entry), "--cache_path", str(cache), "--file_name_prefix", "rc",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert len(server.requests) == 1
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "cannot write the run log" in line]
    assert len(warnings) == 1 and "this run has no log file" in warnings[0]
    summary = json.loads((cache / "rc_summary.json").read_text())
    assert summary["log_path"] is None
    assert (cache / "rc_step3.jsonl").is_file()
    assert "log:" not in proc.stdout  # the summary names no log file
