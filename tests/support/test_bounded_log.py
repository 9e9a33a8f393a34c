"""The test helpers keep a bounded window of what they recorded, so long benchmarks stay flat."""

from __future__ import annotations

import json
import urllib.request

import pytest

from dataflow_mm.serving.base import SamplingParams
from tests.support.bounded_log import BoundedLog
from tests.support.fake_serving import FakeVLMServing
from tests.support.openai_test_server import OpenAITestServer


def test_bounded_log_keeps_the_latest_window_and_counts_everything() -> None:
    log = BoundedLog(window=3)
    assert log == [] and log.total == 0
    for item in range(20):
        log.append(item)
        assert 3 <= len(log) <= 6 or item < 3
        assert log[-1] == item  # the newest is always there
    assert log.total == 20 and log[-3:] == [17, 18, 19] and len(log) <= 6
    with pytest.raises(ValueError):
        BoundedLog(window=0)


def test_fake_serving_records_a_bounded_window_of_requests() -> None:
    serving = FakeVLMServing(load_images=False, window=4)
    conversation = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    for _ in range(50):
        serving.chat([conversation], SamplingParams())
    assert serving.calls.total == 50 and 4 <= len(serving.calls) <= 8
    for _ in range(20):  # large batched calls: the requests held are bounded, not the calls
        serving.chat([conversation] * 3, SamplingParams())
    held = sum(len(call) for call in serving.calls)
    assert serving.calls.total == 70 and 4 <= held <= 8 and len(serving.calls[-1]) == 3


def test_fake_openai_server_records_a_bounded_window_and_keeps_numbering_calls() -> None:
    with OpenAITestServer(window=2) as server:
        for index in range(7):
            body = {"model": "test-model", "messages": [{"role": "user", "content": f"row {index}"}]}
            request = urllib.request.Request(
                f"{server.base_url}/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as reply:
                assert json.loads(reply.read())["id"] == f"chatcmpl-{index}"  # call numbers keep counting
        assert server.requests.total == 7 and 2 <= len(server.requests) <= 4
        assert server.requests[-1].text == "row 6" and server.requests[-1].call == 6


def test_a_bounded_log_pickles_with_its_window_and_totals() -> None:
    import pickle

    log = BoundedLog(window=2, size=len)  # as the fake serving holds its calls
    for call in (["a"], ["b", "c"], ["d"], ["e", "f", "g"]):
        log.append(call)
    copy = pickle.loads(pickle.dumps(log))
    assert copy == log and copy.total == 4 and copy.window == 2
    copy.append(["h"])
    assert copy[-1] == ["h"] and copy.total == 5
