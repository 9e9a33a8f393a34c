"""Which failed requests leave their row pending (a rerun redoes it) and which fail it (issue 23 item 1).

Pending (``ServingUnavailableError`` / ``ImageUnavailableError``): no answer after the retries (connection
refused, closed, timeout, 408/429/5xx, a malformed body), a refused configuration after answers (401),
a vLLM output that finished with ``error`` or ``abort``, a request the engine dropped. Failed: a request the
server refuses as wrong (400/413/422), an empty answer, an image URL that does not exist (404).
Real loopback servers throughout; vLLM outputs are vLLM's own classes when vLLM is installed, else the
same attribute shape.
"""

from __future__ import annotations

import http.server
import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dataflow_mm.common.errors import (
    EXIT_INCOMPLETE,
    ROW_DONE,
    ROW_FAILED,
    ROW_PENDING,
    ImageDownloadError,
    ImageUnavailableError,
    RunStoppedError,
    UserError,
    error_class_of,
    row_outcome,
)
from dataflow_mm.serving.api_serving import APIVLMServing_openai
from dataflow_mm.serving.base import EngineDiedError
from dataflow_mm.serving.messages import build_conversation
from dataflow_mm.serving.vllm_io import completion_of
from dataflow_mm.serving.vllm_window import EngineWindow, WindowLimits
from dataflow_mm.storage.downloads import download_image
from tests.support.openai_test_requests import Fault
from tests.support.openai_test_server import OpenAITestServer
from tests.support.user_inputs import image_http_server

FAST = {"api_key_env": None, "timeout": 0.5, "backoff_base": 0.01, "backoff_max": 0.02}
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def rows(n: int) -> list[Any]:
    return [build_conversation(f"row {i:02d}") for i in range(n)]


# -- the API backend -------------------------------------------------------------------------------

PENDING_FAULTS = {
    "row 01": Fault.http(500),
    "row 02": Fault.http(503),
    "row 03": Fault.http(429, retry_after="0"),
    "row 04": Fault.http(408),
    "row 05": Fault.hang(30),
    "row 06": Fault.close(),
    "row 07": Fault.malformed(),
}
FAILED_FAULTS = {
    "row 08": Fault.http(400),
    "row 09": Fault.http(413),
    "row 10": Fault.http(422),
    "row 11": Fault.empty(),
}


def test_each_api_failure_is_pending_or_failed_by_whether_the_request_is_at_fault() -> None:
    with OpenAITestServer(faults_by_text={**PENDING_FAULTS, **FAILED_FAULTS}) as server:
        api = APIVLMServing_openai(server.base_url, "test-model", max_workers=6, max_retries=1, **FAST)
        out = api.chat(rows(13))
        api.cleanup()
        sent = {f"row {i:02d}": len(server.requests_for(f"row {i:02d}")) for i in range(13)}
    outcomes = {f"row {i:02d}": row_outcome(c.error) for i, c in enumerate(out)}
    for text in PENDING_FAULTS:
        assert outcomes[text] == ROW_PENDING, (text, out[int(text[-2:])].error)
        assert error_class_of(out[int(text[-2:])].error) == "ServingUnavailableError"
        assert sent[text] == 2  # retried once, then left for a rerun
    for text in FAILED_FAULTS:
        assert outcomes[text] == ROW_FAILED, (text, out[int(text[-2:])].error)
        assert error_class_of(out[int(text[-2:])].error) == "ServingError"
        assert sent[text] == 1  # the same request would get the same answer
    assert outcomes["row 00"] == outcomes["row 12"] == ROW_DONE
    assert all(c.text is None for c in out if c.error)  # never an error string posing as an answer


def test_a_pending_row_is_answered_when_it_is_sent_again() -> None:
    """What a rerun does with a pending row: the same request, sent again, is answered."""
    with OpenAITestServer(faults_by_text={"row 01": Fault.http(503, times=2)}) as server:
        api = APIVLMServing_openai(server.base_url, "test-model", max_retries=1, **FAST)
        first = api.chat(rows(2))
        assert row_outcome(first[1].error) == ROW_PENDING
        again = api.chat([rows(2)[1]])
        api.cleanup()
    assert again[0].ok and again[0].text == "answer to: row 01"
    assert len(server.requests_for("row 01")) == 3


# -- vLLM's offline engine -------------------------------------------------------------------------


def _namespace_output(finish_reason: str | None, text: str = "", tokens: tuple[int, ...] = ()) -> Any:
    completion = SimpleNamespace(index=0, text=text, token_ids=list(tokens), finish_reason=finish_reason)
    return SimpleNamespace(request_id="7", prompt_token_ids=[1, 2, 3], outputs=[completion], finished=True)


def _vllm_output(finish_reason: str | None, text: str = "", tokens: tuple[int, ...] = ()) -> Any:
    from vllm.outputs import CompletionOutput, RequestOutput

    completion = CompletionOutput(
        index=0, text=text, token_ids=list(tokens), cumulative_logprob=None, logprobs=None, finish_reason=finish_reason
    )
    return RequestOutput(
        request_id="7",
        prompt=None,
        prompt_token_ids=[1, 2, 3],
        prompt_logprobs=None,
        outputs=[completion],
        finished=True,
    )


BUILDERS = [pytest.param(_namespace_output, id="attribute-shape")]
BUILDERS.append(
    pytest.param(
        _vllm_output,
        id="vllm-classes",
        marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here"),
    )
)


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("reason", ["error", "abort"])
def test_a_vllm_output_finished_with_error_or_abort_is_pending_not_an_empty_answer(build, reason) -> None:
    completion = completion_of(build(reason, text="", tokens=()))
    assert completion.text is None and not completion.ok
    assert error_class_of(completion.error) == "ServingUnavailableError"
    assert f"finish_reason={reason!r}" in completion.error
    assert row_outcome(completion.error) == ROW_PENDING


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("reason", ["stop", "length"])
def test_a_vllm_output_finished_with_stop_or_length_is_an_answer(build, reason) -> None:
    completion = completion_of(build(reason, text=" a cat ", tokens=(5, 6)))
    assert completion.ok and completion.text == "a cat" and completion.finish_reason == reason
    assert completion.completion_tokens == 2 and completion.prompt_tokens == 3


def test_the_finish_reason_enum_of_the_engine_core_is_read_too() -> None:
    """vLLM's engine core names the reason with an IntEnum whose str() is the name; both forms count."""
    vllm_engine = pytest.importorskip("vllm.v1.engine")
    for member, name in ((vllm_engine.FinishReason.ERROR, "error"), (vllm_engine.FinishReason.ABORT, "abort")):
        completion = completion_of(_namespace_output(member))
        assert row_outcome(completion.error) == ROW_PENDING and f"finish_reason={name!r}" in completion.error


class _DroppingLLM:
    """``LLM`` stand-in with vLLM's ``enqueue``/``llm_engine.step`` calls: its engine aborts request 0, then
    reports no unfinished request although request 1 was never answered (a dropped request)."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []
        self.stepped = False
        self.llm_engine = self

    def enqueue(self, requests: list[Any], params: Any, use_tqdm: bool = False) -> list[str]:
        self.enqueued.append(str(len(self.enqueued)))
        return [self.enqueued[-1]]

    def has_unfinished_requests(self) -> bool:
        return not self.stepped

    def step(self) -> list[Any]:
        self.stepped = True
        return [_output_for("0", "abort")]


def test_aborted_and_dropped_vllm_requests_come_back_pending() -> None:
    llm = _DroppingLLM()
    window = EngineWindow(llm, WindowLimits(requests=2, prepared_bytes=1 << 30))
    try:
        outcomes = window.submit(2, lambda i: {"prompt": f"p{i}"}, None)
    finally:
        window.close()
    aborted, dropped = outcomes
    assert row_outcome(completion_of(aborted).error) == ROW_PENDING
    assert type(dropped).__name__ == "ServingUnavailableError" and "dropped" in str(dropped)


def _output_for(request_id: str, finish_reason: str) -> Any:
    output = _namespace_output(finish_reason)
    output.request_id = request_id
    return output


def test_a_dead_engine_stops_the_run_as_incomplete_not_as_a_usage_error() -> None:
    assert issubclass(EngineDiedError, RunStoppedError) and not issubclass(EngineDiedError, UserError)
    assert EXIT_INCOMPLETE == 3  # what the engine side turns a RunStoppedError into


# -- image downloads --------------------------------------------------------------------------------

RED = b"\x89PNG\r\n\x1a\n-not-decoded-here"


def test_an_image_server_that_does_not_answer_leaves_the_row_pending(tmp_path: Path) -> None:
    with image_http_server({"/cat.jpg": RED}) as (base, hits):
        with pytest.raises(ImageDownloadError, match="HTTP 404") as missing:
            download_image(f"{base}/missing.jpg", tmp_path, max_retries=1, backoff_base=0.01)
        assert hits["/missing.jpg"] == 1
    assert not isinstance(missing.value, ImageUnavailableError)
    assert row_outcome(f"{type(missing.value).__name__}: {missing.value}") == ROW_FAILED  # the URL is wrong
    with pytest.raises(ImageUnavailableError, match="connection error") as refused:  # the server is gone now
        download_image(f"{base}/cat.jpg", tmp_path, max_retries=1, backoff_base=0.01, timeout=2)
    assert "after 2 attempts" in str(refused.value)
    assert row_outcome(f"{type(refused.value).__name__}: {refused.value}") == ROW_PENDING


def test_an_image_server_answering_503_leaves_the_row_pending(tmp_path: Path) -> None:
    hits: list[str] = []

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_error(503, "busy")

        def log_message(self, *_: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cat.jpg"
        with pytest.raises(ImageUnavailableError, match="HTTP 503") as unavailable:
            download_image(url, tmp_path, max_retries=1, backoff_base=0.01, timeout=2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert hits == ["/cat.jpg", "/cat.jpg"]  # retried, then left for a rerun
    assert row_outcome(f"ImageUnavailableError: {unavailable.value}") == ROW_PENDING
