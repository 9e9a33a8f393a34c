"""The API serving stops early when every request would fail the same way (issue 23 item 3).

Against real loopback servers: a vLLM-like server refusing the model name (404) or a parameter (400)
-> ``ServingConfigError`` with the server's message after a handful of requests, counted at the server;
no server at all, a server killed mid-run, a server that hangs -> ``RunStoppedError`` after the breaker,
not a failed row per remaining request; requests in flight when the run stops are not returned as answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dataflow_mm.common.errors import ROW_PENDING, RunStoppedError, ServingConfigError, row_outcome
from dataflow_mm.serving.api_serving import APIVLMServing_openai
from dataflow_mm.serving.breaker import CONFIG_REPEATS
from dataflow_mm.serving.messages import build_conversation
from tests.support.openai_test_requests import Fault
from tests.support.openai_test_server import OpenAITestServer
from tests.support.vllm_like_server import VLLMLikeServer

FAST = {"api_key_env": None, "timeout": 0.5, "backoff_base": 0.01, "backoff_max": 0.02}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def rows(n: int, start: int = 0) -> list[Any]:
    return [build_conversation(f"row {i:03d}") for i in range(start, start + n)]


# -- the request is wrong for every row: ServingConfigError (exit 2) ---------------------------------


def test_a_model_the_server_does_not_serve_stops_after_the_requests_in_flight() -> None:
    with VLLMLikeServer(model="tiny-qwen") as server:
        api = APIVLMServing_openai(server.base_url, "Qwen/wrong-name", max_workers=4, **FAST)
        with pytest.raises(ServingConfigError) as stopped:
            api.chat(rows(60))
        with pytest.raises(ServingConfigError):  # later chunks send nothing
            api.chat(rows(20, start=60))
        sent = server.requests.total
        statuses = {r.status for r in server.requests}
        api.cleanup()
    assert 1 <= sent <= 4, sent  # at most the requests already in flight, not 80
    assert statuses == {404}
    message = str(stopped.value)
    assert "\n" not in message
    assert "HTTP 404: The model `Qwen/wrong-name` does not exist. Valid aliases: tiny-qwen." in message
    assert "model 'Qwen/wrong-name'" in message and server.base_url in message


def test_the_server_body_is_vllms_error_response() -> None:
    """The fake server answers a wrong model with the exact JSON shape vLLM 0.32 sends."""
    import httpx

    with VLLMLikeServer(model="tiny-qwen") as server:
        reply = httpx.post(f"{server.base_url}/chat/completions", json={"model": "x", "messages": []}, timeout=5)
    assert reply.status_code == 404
    assert reply.json() == {
        "error": {
            "message": "The model `x` does not exist. Valid aliases: tiny-qwen.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


def test_a_parameter_the_server_refuses_stops_after_the_first_few_requests() -> None:
    with VLLMLikeServer() as server:
        api = APIVLMServing_openai(server.base_url, server.model, max_workers=2, temperature=3.0, **FAST)
        with pytest.raises(ServingConfigError) as stopped:
            api.chat(rows(40))
        sent = server.requests.total
        api.cleanup()
    assert CONFIG_REPEATS <= sent <= CONFIG_REPEATS + 1, sent  # +1: the other worker's request in flight
    assert "HTTP 400: temperature must be in [0, 2], got 3.0." in str(stopped.value)


def test_400s_that_differ_per_row_are_row_failures_not_a_stop() -> None:
    faults = {f"row {i:03d}": Fault.http(400, message=f"image {i} cannot be read") for i in range(3)}
    with OpenAITestServer(faults_by_text=faults) as server:
        api = APIVLMServing_openai(server.base_url, "test-model", max_workers=1, **FAST)
        out = api.chat(rows(6))
        api.cleanup()
    assert [c.ok for c in out] == [False, False, False, True, True, True]
    assert all(c.error.startswith("ServingError: HTTP 400") for c in out[:3])


def test_one_same_400_that_names_no_parameter_is_about_the_rows_not_a_stop() -> None:
    """A table whose first rows hold broken images: the same refusal for each, but no setting is wrong."""
    faults = {f"row {i:03d}": Fault.http(400, message="the image cannot be decoded") for i in range(4)}
    with OpenAITestServer(faults_by_text=faults) as server:
        api = APIVLMServing_openai(server.base_url, "test-model", max_workers=1, **FAST)
        out = api.chat(rows(7))
        api.cleanup()
    assert [c.ok for c in out] == [False] * 4 + [True] * 3
    assert all(row_outcome(c.error) == "failed" for c in out[:4])


def test_a_refused_key_stops_with_the_servers_message_and_the_key_scrubbed() -> None:
    secret = "sk-wrong-key-5b1e77a2c9"
    with OpenAITestServer(api_key="sk-right-key-000000", echo_authorization=True) as server:
        api = APIVLMServing_openai(server.base_url, "test-model", api_key=secret, max_workers=3, **FAST)
        with pytest.raises(ServingConfigError) as stopped:
            api.chat(rows(30))
        sent = server.requests.total
        echoed = {r.authorization for r in server.requests}
        api.cleanup()
    assert echoed == {f"Bearer {secret}"} and sent <= 3
    message = str(stopped.value)
    assert "HTTP 401: Incorrect API key provided" in message and "Authorization" in message
    assert secret not in message and "***" in message


# -- the server is gone: RunStoppedError (exit 3, rows pending) ---------------------------------------


def test_no_server_stops_the_run_after_the_breaker_not_after_every_row() -> None:
    with OpenAITestServer() as server:
        url = server.base_url  # closed: connections to it are refused
    api = APIVLMServing_openai(url, "test-model", max_workers=4, max_retries=1, max_consecutive_failures=5, **FAST)
    started = time.monotonic()
    out = api.chat(rows(60))  # the call in flight when the breaker trips returns: every row pending
    elapsed = time.monotonic() - started
    attempts = api.stats.extra["http_requests"]
    assert [row_outcome(c.error) for c in out] == [ROW_PENDING] * 60
    with pytest.raises(RunStoppedError) as stopped:  # the next call stops the run
        api.chat(rows(1))
    assert api.stats.extra["http_requests"] == attempts  # ... sending nothing
    api.cleanup()
    assert "stopped answering: 5 requests in a row failed" in str(stopped.value)
    assert "--api_max_consecutive_failures 5" in str(stopped.value) and "Connection refused" in str(stopped.value)
    assert attempts <= (5 + 4) * 2, attempts  # 5 requests + those in flight, 2 attempts each; not 60 rows
    assert elapsed < 5.0, elapsed


def test_a_server_that_answers_nothing_stops_the_run_after_max_unanswered_s() -> None:
    with OpenAITestServer(faults_by_text={"": Fault.hang(30)}) as server:
        api = APIVLMServing_openai(
            server.base_url,
            "test-model",
            max_workers=2,
            max_retries=5,
            max_consecutive_failures=0,  # only the time rule
            max_unanswered_s=1.0,
            **{**FAST, "timeout": 0.3},
        )
        started = time.monotonic()
        out = api.chat(rows(20))
        elapsed = time.monotonic() - started
        with pytest.raises(RunStoppedError) as stopped:
            api.chat(rows(1))
        api.cleanup()
    assert [row_outcome(c.error) for c in out] == [ROW_PENDING] * 20
    assert "answered no request for" in str(stopped.value) and "--api_max_unanswered_s 1" in str(stopped.value)
    assert 1.0 <= elapsed < 3.0, elapsed


def test_a_server_killed_mid_run_leaves_rows_pending_or_stops_the_run() -> None:
    """Chunks of 10 rows, two in flight at once (as the step executor runs an API step); the server is
    closed after 25 requests. Every chunk either comes back whole (answered or pending rows) or raises
    RunStoppedError; once the run stopped no chunk returns, and the server got no request after it closed."""
    server = OpenAITestServer(delay=0.01).start()
    api = APIVLMServing_openai(server.base_url, "test-model", max_workers=4, max_retries=1, **FAST)
    results: dict[int, Any] = {}

    def kill_after(n: int) -> None:
        while server.requests.total < n:
            time.sleep(0.005)
        server.close()

    killer = threading.Thread(target=kill_after, args=(25,))
    killer.start()

    def run_chunk(index: int) -> None:
        try:
            results[index] = api.chat(rows(10, start=10 * index))
        except RunStoppedError as exc:
            results[index] = exc

    try:
        for pair in range(0, 12, 2):  # 120 rows
            threads = [threading.Thread(target=run_chunk, args=(i,)) for i in (pair, pair + 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    finally:
        killer.join(10)
        server.close()
        api.cleanup()
    stopped = [i for i, r in results.items() if isinstance(r, RunStoppedError)]
    assert stopped, "the breaker never stopped the run"
    first_stop = min(stopped)
    for index in range(first_stop + 2, 12):  # every chunk started after the stop raises, sending nothing
        assert isinstance(results[index], RunStoppedError), index
    returned = [c for r in results.values() if isinstance(r, list) for c in r]
    for completion in returned:  # a returned chunk holds answers and pending rows only
        assert completion.ok or row_outcome(completion.error) == ROW_PENDING, completion.error
    assert server.requests.total <= 25 + 4  # the requests in flight when it closed, and nothing after
    pending_written = sum(1 for c in returned if not c.ok)
    assert pending_written < 60  # not a failed row for every remaining request


def test_an_answer_in_flight_when_the_run_stops_is_kept_and_the_next_call_stops() -> None:
    """One call waits on a slow answer while another call's failures trip the breaker: the slow answer is
    a real answer (its row is done and never asked again); the failed rows are pending; the next call of
    the stopped run raises, so the run stops after the chunks in flight are written."""
    faults = {"slow": Fault.hang(0.8, times=1), "bad": Fault.http(503)}
    with OpenAITestServer(faults_by_text=faults) as server:
        options = {**FAST, "timeout": 5.0, "max_workers": 4, "max_retries": 0, "max_consecutive_failures": 3}
        api = APIVLMServing_openai(server.base_url, "test-model", **options)
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(slow=api.chat([build_conversation("slow row")])))
        thread.start()
        while not server.requests_for("slow"):
            time.sleep(0.005)
        failed = api.chat([build_conversation(f"bad row {i}") for i in range(3)])
        thread.join(10)
        with pytest.raises(RunStoppedError):
            api.chat([build_conversation("after the stop")])
        slow_records = server.requests_for("slow")
        after = server.requests_for("after the stop")
        api.cleanup()
    assert [r.status for r in slow_records] == [200] and [c.ok for c in outcome["slow"]] == [True]
    assert [row_outcome(c.error) for c in failed] == [ROW_PENDING] * 3
    assert after == []


def test_a_stopped_serving_starts_afresh_after_cleanup() -> None:
    with OpenAITestServer() as server:
        url, port = server.base_url, server.port
    api = APIVLMServing_openai(url, "test-model", max_workers=2, max_retries=0, max_consecutive_failures=2, **FAST)
    api.chat(rows(10))
    with pytest.raises(RunStoppedError):
        api.chat(rows(1))
    api.cleanup()
    with OpenAITestServer(port=port) as back:
        out = api.chat(rows(3))
        assert [c.ok for c in out] == [True, True, True] and back.requests.total == 3
    api.cleanup()


# -- the script: exit 2 and one line naming the model --------------------------------------------------


def test_the_region_caption_script_exits_2_naming_the_model_the_server_does_not_serve(tmp_path: Path) -> None:
    images = REPO / "data" / "image_region_caption"
    entries = [{"image": str(images / n), "bbox": [[40, 40, 120, 100]]} for n in ("street.jpg", "park.jpg")] * 20
    first_entry = tmp_path / "in.jsonl"
    first_entry.write_text("".join(json.dumps(e) + "\n" for e in entries))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for name in ("OPENAI_API_KEY", "DF_API_KEY", *PROXY_VARS):
        env.pop(name, None)
    with VLLMLikeServer(model="tiny-qwen") as server:
        cmd = [
            sys.executable, str(REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"),
            "--backend", "api", "--api_url", server.base_url, "--model_name", "Qwen2.5-VL-7B-typo",
            "--first_entry_file", str(first_entry), "--cache_path", str(tmp_path / "cache"),
            "--file_name_prefix", "rc", "--chunk_size", "4", "--max_workers", "4",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        sent = server.requests.total
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Qwen2.5-VL-7B-typo" in last and "does not exist" in last, last
    assert 1 <= sent <= 8, sent  # the requests in flight (two chunks of 4), not all 40 rows
    assert not (tmp_path / "cache" / "rc_step2.jsonl").exists()  # no row of the refused step was written


def test_the_stop_flags_refuse_values_that_cannot_work() -> None:
    from argparse import Namespace

    from dataflow_mm.pipeline.arg_checks import arg_problems

    assert arg_problems(Namespace(api_max_consecutive_failures=0, api_max_unanswered_s=0.0)) == []
    problems = arg_problems(Namespace(api_max_consecutive_failures=-1, api_max_unanswered_s=float("nan")))
    assert problems == [
        "--api_max_consecutive_failures must be at least 0 (got -1)",
        "--api_max_unanswered_s must be 0 (never stop) or a number of seconds (got nan)",
    ]
