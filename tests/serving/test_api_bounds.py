"""A hostile endpoint cannot stretch a request past ``timeout`` nor blow up memory (issue #12 item 11)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import tracemalloc

import pytest

from dataflow_mm.serving.api_serving import APIVLMServing_openai
from dataflow_mm.serving.http_reply import DEFAULT_MAX_RESPONSE_BYTES
from tests.support.openai_test_requests import Fault
from tests.support.openai_test_server import OpenAITestServer

pytest.importorskip("httpx")

CHAT = [{"role": "user", "content": "describe the picture"}]


def serving(server: OpenAITestServer, **kwargs) -> APIVLMServing_openai:
    return APIVLMServing_openai(server.base_url, "test-model", api_key="sk-test", api_key_env=None, **kwargs)


def test_timeout_bounds_the_whole_request_against_a_server_trickling_bytes():
    # 0.2 s per byte keeps every read far inside the timeout; the answer would take over 10 s.
    with OpenAITestServer(plan=[Fault.trickle(seconds_per_byte=0.2, max_bytes=60)]) as server:
        api = serving(server, timeout=1.5, max_retries=0)
        started = time.monotonic()
        (completion,) = api.chat([CHAT])
        elapsed = time.monotonic() - started
        api.cleanup()
    assert completion.text is None
    assert completion.error.startswith("ServingUnavailableError: timeout")  # pending: a rerun sends it again
    assert elapsed < 4.0, elapsed


def test_timeout_still_lets_a_normal_answer_through_and_each_request_gets_its_own_time():
    with OpenAITestServer(delay=0.3) as server:
        api = serving(server, timeout=1.0, max_retries=0, max_workers=2)
        completions = api.chat([CHAT] * 4)  # 4 x 0.3 s in total, more than one timeout
        api.cleanup()
    assert all(c.ok for c in completions), [c.error for c in completions]


def test_a_reply_over_the_cap_is_a_row_error_without_inflating_it():
    inflated = 64 * 2**20  # a ~64 KB gzip body that inflates to 64 MiB
    with OpenAITestServer(plan=[Fault.gzip_bomb(inflated)]) as server:
        api = serving(server, max_response_bytes=2**20, max_retries=2)
        tracemalloc.start()
        try:
            (completion,) = api.chat([CHAT])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        api.cleanup()
        attempts = len(server.requests)
    assert completion.text is None
    assert completion.error.startswith("ServingError: reply too large (not retryable)")
    assert attempts == 1  # the same request would get the same reply
    assert peak < 16 * 2**20, peak


def test_a_reply_declaring_a_length_over_the_cap_is_refused_and_the_cap_is_a_few_mib():
    assert 2**20 <= DEFAULT_MAX_RESPONSE_BYTES <= 16 * 2**20
    with OpenAITestServer(answer_fn=lambda body: "x" * 5000) as server:
        api = serving(server, max_response_bytes=1000)
        (completion,) = api.chat([CHAT])
        api.cleanup()
    assert completion.error.startswith("ServingError: reply too large")


def test_a_gzip_reply_within_the_cap_is_read():
    with OpenAITestServer(plan=[Fault.gzip_bomb(1000)]) as server:
        api = serving(server, max_retries=0)
        (completion,) = api.chat([CHAT])
        api.cleanup()
    # 1000 zero bytes are not JSON: read in full, then reported as such (not as too large)
    assert completion.error.startswith("ServingUnavailableError: malformed JSON response")


def test_timeout_also_bounds_a_server_trickling_its_headers():
    """A raw socket server that sends its status line and headers one byte every 0.2 s (at most 60)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def trickle_headers() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 40:
                    if stop.wait(0.2):
                        break
                    conn.sendall(bytes([byte]))

    thread = threading.Thread(target=trickle_headers, daemon=True)
    thread.start()
    api = APIVLMServing_openai(
        f"http://127.0.0.1:{listener.getsockname()[1]}/v1", "m", api_key_env=None, timeout=1.5, max_retries=0
    )
    started = time.monotonic()
    try:
        (completion,) = api.chat([CHAT])
    finally:
        elapsed = time.monotonic() - started
        stop.set()
        api.cleanup()
        thread.join(5)
        listener.close()
    assert completion.error.startswith("ServingUnavailableError: timeout")  # pending: a rerun sends it again
    assert elapsed < 4.0, elapsed
