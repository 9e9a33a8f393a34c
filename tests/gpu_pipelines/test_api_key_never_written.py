"""The API key never reaches a step file, the report, the summary or the log (issue #12 item 3).

Attacks: a key ending in ``\\r`` or holding ``\\n`` (httpx's error message quotes the header), and a
server that echoes the ``Authorization`` header in its error messages. After each run, every
file under the test folder and the captured stdout/stderr are searched for the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataflow_mm.common.errors import EXIT_INCOMPLETE
from tests.support.openai_test_requests import Fault
from tests.support.openai_test_server import OpenAITestServer

pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
IMAGES = REPO / "data" / "image_region_caption"
KEY_VAR = "DFMM_SCRUB_TEST_KEY"
SECRET = "sk-scrub-test-7f3a9c2e51"


def run_with_key(server: OpenAITestServer, tmp_path: Path, key: str) -> subprocess.CompletedProcess[str]:
    first_entry = tmp_path / "in.jsonl"
    rows = [{"image": str(IMAGES / name), "bbox": [[40, 40, 120, 100]]} for name in ("street.jpg", "park.jpg")]
    first_entry.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [
        sys.executable, str(SCRIPT),
        "--backend", "api", "--api_url", server.base_url, "--model_name", "test-model", "--api_key_env", KEY_VAR,
        "--first_entry_file", str(first_entry), "--cache_path", str(tmp_path / "cache"), "--file_name_prefix", "rc",
        "--api_max_retries", "1",
    ]  # fmt: skip
    env = {
        **os.environ,
        KEY_VAR: key,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    for name in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def assert_secret_nowhere(proc: subprocess.CompletedProcess[str], folder: Path) -> None:
    assert SECRET not in proc.stdout and SECRET not in proc.stderr
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("key", [SECRET + "\r", SECRET + "\n", f"{SECRET[:9]}\n{SECRET[9:]}", f"\t{SECRET}"])
def test_a_key_with_control_characters_is_refused_before_any_request(tmp_path, key):
    with OpenAITestServer() as server:
        proc = run_with_key(server, tmp_path, key)
        assert not server.requests
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "control character" in proc.stderr.strip().splitlines()[-1]
    assert_secret_nowhere(proc, tmp_path)
    for piece in key.split():
        assert piece not in proc.stderr


def test_a_server_echoing_the_key_in_its_errors_leaks_it_nowhere(tmp_path):
    faults = {"": Fault.http(401, message="Incorrect API key provided")}  # every request
    with OpenAITestServer(faults_by_text=faults, echo_authorization=True) as server:
        proc = run_with_key(server, tmp_path, SECRET)
        echoed = [r.authorization for r in server.requests]
    assert proc.returncode == 2, proc.stderr[-3000:]  # a refused key stops the run: every request would fail
    assert echoed and all(a == f"Bearer {SECRET}" for a in echoed)  # the key was sent, and echoed back
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "HTTP 401: Incorrect API key provided" in last and "Authorization" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache" / "rc_step2.jsonl").exists()  # no row of the refused step was written
    assert_secret_nowhere(proc, tmp_path)


def test_a_retried_server_error_echoing_the_key_leaks_it_nowhere(tmp_path):
    faults = {"": Fault.http(500, message=f"upstream rejected key {SECRET}")}
    with OpenAITestServer(faults_by_text=faults) as server:
        proc = run_with_key(server, tmp_path, SECRET)
        assert len(server.requests) == 4  # 2 rows x (1 try + 1 retry)
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr[-3000:]  # a 500 after the retries: rows pending
    assert_secret_nowhere(proc, tmp_path)
