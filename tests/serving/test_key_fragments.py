"""No piece of the API key, and no control character of a server's text, is written or printed (issue 24, 7 and 14).

A server's error text used to be cut (at 300 characters, a malformed reply's snippet at 80) before the
key was scrubbed: a key straddling the cut left 21 to 34 of its 44 characters in the row, the step files,
the report and the log, and a key written with JSON escapes (``\\/``) or URL-encoded survived whole. A
server's ANSI escape sequences reached the terminal and the run log as they were. The pipeline runs
against the fake OpenAI server answering each request with one such reply (400s, which fail their row:
a 401 stops the run instead, checked separately); then every file under the test folder, stdout and
stderr are searched for any 8 consecutive characters of any form of the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from dataflow_mm.common.errors import EXIT_INCOMPLETE, EXIT_USAGE
from tests.support.openai_test_requests import Fault
from tests.support.openai_test_server import OpenAITestServer

pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
IMAGES = REPO / "data" / "image_region_caption"
KEY_VAR = "DFMM_FRAGMENT_TEST_KEY"
KEY = "sk-proj/Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"  # 44 characters, one of them a "/"
MIN_FRAGMENT = 8  # the issue: no run of 8 or more characters of the key
ANSI = "\x1b[2J\x1b[31mACCESS DENIED\x1b[0m\r\x07"

FORMS = {
    "plain": KEY,
    "json-escaped": KEY.replace("/", "\\/"),
    "url-encoded": quote(KEY, safe=""),
}
STRADDLING = "x" * 280 + f" invalid key {KEY} for this project"  # the key straddles the 300-character cut
REPLIES = [
    Fault.http(400, message=STRADDLING),
    Fault.http(400, message='rejected request body: {"api_key": "' + FORMS["json-escaped"] + '"}'),
    Fault.http(400, message=f"GET /check?key={FORMS['url-encoded']} failed"),
    Fault.malformed(body='{"error": "bad key ' + "y" * 40 + KEY + '", "choices": [{"mess'),  # cut at 80
    Fault.http(400, message=f"{ANSI} key {KEY[:20]}"),
]


def _pieces() -> set[str]:
    """Every run of MIN_FRAGMENT characters of every form of the key."""
    return {form[i : i + MIN_FRAGMENT] for form in FORMS.values() for i in range(len(form) - MIN_FRAGMENT + 1)}


def _leaks(text: str) -> list[str]:
    return sorted(piece for piece in _pieces() if piece in text)


def _run(server: OpenAITestServer, tmp_path: Path, rows: int) -> subprocess.CompletedProcess[str]:
    first_entry = tmp_path / "in.jsonl"
    names = ["street.jpg", "park.jpg", "kitchen.jpg", "shapes.jpg"]
    lines = [{"image": str(IMAGES / names[i % 4]), "bbox": [[40, 40, 120, 100]], "n": i} for i in range(rows)]
    first_entry.write_text("".join(json.dumps(r) + "\n" for r in lines))
    cmd = [
        sys.executable, str(SCRIPT),
        "--backend", "api", "--api_url", server.base_url, "--model_name", "test-model", "--api_key_env", KEY_VAR,
        "--first_entry_file", str(first_entry), "--cache_path", str(tmp_path / "cache"), "--file_name_prefix", "rc",
        "--api_max_retries", "0", "--max_workers", "1",
    ]  # fmt: skip
    env = {**os.environ, KEY_VAR: KEY, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for name in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_no_piece_of_the_key_and_no_control_character_of_server_text_is_written_or_printed(tmp_path: Path) -> None:
    with OpenAITestServer(plan=REPLIES) as server:
        proc = _run(server, tmp_path, len(REPLIES))
        served = [r.fault for r in server.requests]
    assert proc.returncode == EXIT_INCOMPLETE, proc.stderr[-3000:]  # the malformed reply's row is pending
    assert sorted(map(str, served)) == sorted(["status"] * 4 + ["malformed"])  # every attack was sent

    rows = [json.loads(line) for line in (tmp_path / "cache" / "rc_step2.jsonl").read_text().splitlines()]
    errors = [row["error"] for row in rows]
    assert len(errors) == len(REPLIES) and all(isinstance(e, str) for e in errors)
    assert sum(e.startswith("ServingError: HTTP 400") for e in errors) == 4
    assert sum(e.startswith("ServingUnavailableError") and "malformed" in e for e in errors) == 1
    assert all("***" in e for e in errors), errors  # each quoted the key, now redacted
    assert any("\\x1b[31m" in e for e in errors)  # the escape sequence is shown, escaped
    for error in errors:
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in error), repr(error)

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in written) and any(p.suffix == ".html" for p in written)
    for path in written:
        text = path.read_bytes().decode("utf-8", errors="replace")
        assert not _leaks(text), (path, _leaks(text))
    for stream in (proc.stdout, proc.stderr):
        assert not _leaks(stream), _leaks(stream)
        assert "\x1b" not in stream and "\x07" not in stream and "\r" not in stream
    run_log = next(p for p in written if p.suffix == ".log").read_text()
    assert "\x1b" not in run_log and "\x07" not in run_log and "\r" not in run_log


def test_a_refused_key_stops_the_run_with_the_server_text_scrubbed(tmp_path: Path) -> None:
    """A 401 stops the run (exit 2, one line): that line quotes the server, never a piece of the key."""
    with OpenAITestServer(plan=[Fault.http(401, message=STRADDLING)] * 4) as server:
        proc = _run(server, tmp_path, 4)
    assert proc.returncode == EXIT_USAGE, proc.stderr[-3000:]
    assert "HTTP 401" in proc.stderr and "***" in proc.stderr
    for stream in (proc.stdout, proc.stderr):
        assert not _leaks(stream), _leaks(stream)
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert not _leaks(path.read_bytes().decode("utf-8", errors="replace")), path
