"""APIVLMServing_openai against a real HTTP server on 127.0.0.1 that misbehaves on demand."""

from __future__ import annotations

import base64
import email.utils
import io
import random
import threading
import time

import httpx  # noqa: F401 - a declared test dependency: imported, never skipped
import pytest
from PIL import Image

from dataflow_mm.common.errors import ServingConfigError, UserError, error_class_of, row_outcome
from dataflow_mm.common.retry import RetryPolicy, is_retryable_status
from dataflow_mm.serving.api_images import encode_image
from dataflow_mm.serving.api_serving import APIVLMServing_openai, chat_completions_url
from dataflow_mm.serving.base import SamplingParams
from dataflow_mm.serving.messages import build_conversation
from tests.support.openai_test_requests import Fault, default_answer, image_urls, user_text
from tests.support.openai_test_server import OpenAITestServer

FAST = {"timeout": 1.0, "backoff_base": 0.01, "backoff_max": 0.05}


def make_backend(server: OpenAITestServer, **kwargs) -> APIVLMServing_openai:
    options = {"api_key_env": None, "max_workers": 4, "max_retries": 3, **FAST, **kwargs}
    return APIVLMServing_openai(server.base_url, "test-model", **options)


def prompts(n: int) -> list[list[dict]]:
    return [build_conversation(f"row {i:02d}") for i in range(n)]


PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """httpx honours proxy variables: the fake server is on 127.0.0.1 and must be reached directly."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def backends():
    made: list[APIVLMServing_openai] = []
    yield made
    for backend in made:
        backend.cleanup()


def decode_data_url(url: str) -> tuple[str, Image.Image]:
    header, data = url.split(",", 1)
    mime = header[len("data:") :].split(";")[0]
    return mime, Image.open(io.BytesIO(base64.b64decode(data)))


def assert_row_outcomes(completions) -> None:
    for c in completions:
        assert (c.text is None) != (c.error is None), c
        if c.error is not None:
            assert error_class_of(c.error) in ("ServingError", "ServingUnavailableError", "ImageNotFoundError"), c.error


def assert_nothing_after_success(server: OpenAITestServer, texts: list[str]) -> None:
    """For every row: exactly one clean 200 answer and no request arrived after it."""
    for text in texts:
        records = server.requests_for(text)
        ok = [r for r in records if r.ok]
        assert len(ok) <= 1, f"{text}: answered {len(ok)} times"
        if ok:
            assert records[-1] is ok[0], f"{text}: request sent after a successful answer"


# --------------------------------------------------------------------------------------------------
# Retry policy (pure, fake clock/randomness)
# --------------------------------------------------------------------------------------------------


def test_retryable_statuses():
    assert all(is_retryable_status(s) for s in (408, 429, 500, 502, 503, 504, 599))
    assert not any(is_retryable_status(s) for s in (200, 400, 401, 403, 404, 413, 422, 600))


def test_backoff_is_exponential_and_capped_without_jitter():
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert policy.delay(10_000) == 3.0  # no overflow


def test_backoff_jitter_stays_within_bounds():
    policy = RetryPolicy(backoff_base=1.0, backoff_max=30.0, jitter=0.5, rng=random.Random(7))
    for n, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 30.0)]:
        samples = [policy.delay(n) for _ in range(300)]
        assert all(ceiling * 0.5 <= s <= ceiling for s in samples)
        assert max(samples) - min(samples) > ceiling * 0.3  # actually jittered


def test_retry_after_seconds_and_http_date_are_honoured_up_to_retry_after_max():
    now = 1_700_000_000.0
    policy = RetryPolicy(backoff_base=1.0, backoff_max=10.0, retry_after_max=60.0, clock=lambda: now)
    assert policy.delay(1, "7") == 7.0
    assert policy.delay(3, "0.25") == 0.25  # replaces the computed backoff
    assert policy.delay(1, "0") == 0.0
    assert policy.delay(1, "45") == 45.0  # above backoff_max, within retry_after_max: honoured
    assert policy.too_long(policy.server_wait("61")) and not policy.too_long(policy.server_wait("60"))
    assert policy.delay(1, email.utils.formatdate(now + 4, usegmt=True)) == pytest.approx(4.0)
    assert policy.delay(1, email.utils.formatdate(now - 60, usegmt=True)) == 0.0  # date in the past
    assert policy.too_long(policy.server_wait(email.utils.formatdate(now + 3600, usegmt=True)))
    for bad in ("soon", "", "-5x"):
        assert 0.5 <= policy.delay(1, bad) <= 1.0  # ignored: plain backoff
    assert policy.parse_retry_after("-3") == 0.0


def test_should_retry_counts_attempts():
    policy = RetryPolicy(max_retries=2)
    assert policy.max_attempts == 3
    assert policy.should_retry(1, True) and policy.should_retry(2, True)
    assert not policy.should_retry(3, True)
    assert not policy.should_retry(1, False)
    assert not RetryPolicy(max_retries=0).should_retry(1, True)


# --------------------------------------------------------------------------------------------------
# Happy path: order, concurrency, body, tokens
# --------------------------------------------------------------------------------------------------


def test_answers_come_back_in_input_order_even_when_later_rows_finish_first(backends):
    def slow_first(body):
        index = int(user_text(body).split()[-1])
        time.sleep(0.01 * (12 - index))
        return default_answer(body)

    with OpenAITestServer(answer_fn=slow_first) as server:
        backend = make_backend(server, max_workers=6)
        backends.append(backend)
        out = backend.chat(prompts(12))
        assert [c.text for c in out] == [f"answer to: row {i:02d}" for i in range(12)]
        arrival = [r.text for r in sorted(server.requests, key=lambda r: r.finished)]
        assert arrival != [f"row {i:02d}" for i in range(12)]  # they really finished out of order


def test_a_used_backend_pickles_and_its_copy_answers(backends):
    """Servings are shipped to Ray workers by pickling: the open client and locks must not travel."""
    import pickle

    with OpenAITestServer() as server:
        backend = make_backend(server, max_workers=2)
        backends.append(backend)
        assert backend.chat(prompts(2))[0].ok  # the client is open now
        copy = pickle.loads(pickle.dumps(backend))
        backends.append(copy)
        out = copy.chat(prompts(3))
        assert [c.text for c in out] == [f"answer to: row {i:02d}" for i in range(3)]
        assert copy.describe() == backend.describe()


@pytest.mark.parametrize("limit", [1, 3])
def test_in_flight_requests_never_exceed_the_limit(backends, limit):
    with OpenAITestServer(delay=0.05) as server:
        backend = make_backend(server, max_workers=limit)
        backends.append(backend)
        out = backend.chat(prompts(9))
        assert all(c.ok for c in out)
        assert len(server.requests) == 9
        assert server.max_in_flight == limit  # bounded, and actually concurrent when allowed


def test_limit_holds_across_concurrent_chat_calls_on_one_backend(backends):
    with OpenAITestServer(delay=0.05) as server:
        backend = make_backend(server, max_workers=2)
        backends.append(backend)
        results: list = [None, None]

        def run(k):
            results[k] = backend.chat([build_conversation(f"call {k} row {i}") for i in range(4)])

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert all(c.ok for r in results for c in r)
        assert server.max_in_flight == 2


def test_body_carries_model_sampling_and_extra_body(backends):
    with OpenAITestServer() as server:
        backend = make_backend(server, extra_body={"top_k": 5, "repetition_penalty": 1.1})
        backends.append(backend)
        backend.chat(prompts(1), SamplingParams(temperature=0.2, top_p=0.8, max_tokens=64, seed=123))
        backend.chat(prompts(1))  # constructor defaults, no seed
        first, second = (r.body for r in server.requests)
        assert first["model"] == "test-model"
        assert (first["temperature"], first["top_p"], first["max_tokens"], first["seed"]) == (
            0.2,
            0.8,
            64,
            123,
        )
        assert first["top_k"] == 5 and first["repetition_penalty"] == 1.1
        assert (second["temperature"], second["top_p"], second["max_tokens"]) == (0.7, 0.9, 512)
        assert "seed" not in second
        assert first["messages"][-1]["content"] == [{"type": "text", "text": "row 00"}]


def test_constructor_sampling_arguments_are_used(backends):
    with OpenAITestServer() as server:
        backend = make_backend(server, temperature=0.0, top_p=1.0, max_tokens=32, seed=7)
        backends.append(backend)
        backend.chat(prompts(1))
        body = server.requests[0].body
        assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.0, 1.0, 32, 7)


def test_system_prompt_and_string_content_pass_through(backends):
    with OpenAITestServer() as server:
        backend = make_backend(server)
        backends.append(backend)
        out = backend.chat([[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]])
        assert out[0].text == "answer to: hello"
        assert server.requests[0].body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ]


def test_token_usage_and_stats(backends):
    with OpenAITestServer(status_for_text={"row 02": 400}) as server:
        backend = make_backend(server)
        backends.append(backend)
        out = backend.chat(prompts(4))
        ok = [c for c in out if c.ok]
        assert len(ok) == 3 and all(c.prompt_tokens and c.completion_tokens == 4 for c in ok)
        stats = backend.stats
        assert (stats.calls, stats.requests, stats.failed, stats.retried) == (1, 4, 1, 0)
        assert stats.completion_tokens == 12
        assert stats.prompt_tokens == sum(c.prompt_tokens for c in ok)
        assert stats.extra["http_requests"] == 4


def test_answers_cut_at_max_tokens_are_marked_truncated_and_counted(backends):
    with OpenAITestServer() as server:
        backend = make_backend(server, max_tokens=2)
        backends.append(backend)
        out = backend.chat(prompts(3))
        assert [(c.ok, c.finish_reason, c.truncated, c.completion_tokens) for c in out] == [
            (True, "length", True, 2)
        ] * 3
        assert backend.stats.truncated == 3
        whole = make_backend(server, max_tokens=50)
        backends.append(whole)
        assert [c.truncated for c in whole.chat(prompts(2))] == [False, False]
        assert whole.stats.truncated == 0


def test_generate_from_input_convenience(backends):
    with OpenAITestServer() as server:
        backend = make_backend(server)
        backends.append(backend)
        assert backend.generate_from_input(["a", "b"], system_prompt="sys") == [
            "answer to: a",
            "answer to: b",
        ]


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def test_images_are_downscaled_and_sent_as_data_urls_with_the_right_mime(backends, tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (2000, 1000), (10, 200, 30)).save(wide)
    alpha = tmp_path / "alpha.png"
    Image.new("RGBA", (300, 600), (0, 0, 255, 128)).save(alpha)
    small = Image.new("RGB", (64, 48), "red")
    jpeg_bytes = io.BytesIO()
    Image.new("RGB", (1500, 1500), "blue").save(jpeg_bytes, format="JPEG")
    with OpenAITestServer() as server:
        backend = make_backend(server, max_image_side=512, max_workers=1)
        backends.append(backend)
        rows = [
            build_conversation("wide", [str(wide)]),
            build_conversation("alpha", [alpha]),
            build_conversation("pil", [small]),
            build_conversation("bytes", [jpeg_bytes.getvalue()]),
        ]
        assert all(c.ok for c in backend.chat(rows))
        sent = {r.text: image_urls(r.body) for r in server.requests}
    mime, img = decode_data_url(sent["wide"][0])
    assert (mime, img.format, img.size) == ("image/jpeg", "JPEG", (512, 256))
    mime, img = decode_data_url(sent["alpha"][0])
    assert (mime, img.format, img.size) == ("image/png", "PNG", (256, 512))
    mime, img = decode_data_url(sent["pil"][0])
    assert (mime, img.size) == ("image/jpeg", (64, 48))  # never upscaled
    mime, img = decode_data_url(sent["bytes"][0])
    assert (mime, img.size) == ("image/jpeg", (512, 512))


def test_image_format_png_and_no_downscale(backends):
    with OpenAITestServer() as server:
        backend = make_backend(server, max_image_side=None, image_format="png")
        backends.append(backend)
        backend.chat([build_conversation("big", [Image.new("RGB", (1300, 700), "white")])])
        mime, img = decode_data_url(image_urls(server.requests[0].body)[0])
        assert (mime, img.size) == ("image/png", (1300, 700))


def test_http_and_data_urls_pass_through_untouched(backends):
    data_url = encode_image(Image.new("RGB", (4000, 10), "green"), max_side=None, fmt="PNG")
    with OpenAITestServer() as server:
        backend = make_backend(server, max_image_side=16)
        backends.append(backend)
        conversation = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
                    },
                    {"type": "image", "image": "http://example.com/dog.png"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": "three images"},
                ],
            }
        ]
        assert backend.chat([conversation])[0].ok
        content = server.requests[0].body["messages"][0]["content"]
    assert content[0] == {
        "type": "image_url",
        "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
    }
    assert content[1] == {"type": "image_url", "image_url": {"url": "http://example.com/dog.png"}}
    assert content[2]["image_url"]["url"] == data_url  # not re-encoded, not downscaled


def test_unreadable_image_fails_its_row_without_a_request(backends, tmp_path):
    with OpenAITestServer() as server:
        backend = make_backend(server)
        backends.append(backend)
        rows = [build_conversation("fine"), build_conversation("missing", [str(tmp_path / "nope.jpg")])]
        out = backend.chat(rows)
        assert out[0].text == "answer to: fine"
        assert out[1].text is None and error_class_of(out[1].error) == "ImageNotFoundError"
        assert [r.text for r in server.requests] == ["fine"]


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


def test_500_for_the_first_n_calls_is_retried_exactly(backends):
    with OpenAITestServer(fail_first_n=(500, 2)) as server:
        backend = make_backend(server, max_workers=1, max_retries=3)
        backends.append(backend)
        out = backend.chat(prompts(3))
        assert [c.text for c in out] == ["answer to: row 00", "answer to: row 01", "answer to: row 02"]
        assert [r.text for r in server.requests] == ["row 00", "row 00", "row 00", "row 01", "row 02"]
        assert [r.status for r in server.requests] == [500, 500, 200, 200, 200]
        assert backend.stats.retried == 2 and backend.stats.failed == 0
        assert backend.stats.extra["retry_causes"] == {"HTTP 500": 2}


@pytest.mark.parametrize("max_retries", [0, 2])
def test_500_forever_gives_up_after_max_retries_and_names_the_cause(backends, max_retries):
    with OpenAITestServer(
        faults_by_text={"row 01": Fault.http(503, message="model is overloaded")}, delay=0.0
    ) as server:
        backend = make_backend(server, max_retries=max_retries)
        backends.append(backend)
        out = backend.chat(prompts(3))
        assert out[0].ok and out[2].ok
        bad = out[1]
        assert bad.text is None
        assert bad.error.startswith("ServingUnavailableError: HTTP 503")  # no answer: the row is pending
        assert row_outcome(bad.error) == "pending"
        assert "model is overloaded" in bad.error
        if max_retries:
            assert f"after {max_retries + 1} attempts" in bad.error
        assert len(server.requests_for("row 01")) == max_retries + 1
        assert backend.stats.retried == max_retries and backend.stats.failed == 1


def test_429_honours_retry_after_and_falls_back_to_backoff(backends):
    sleeps: list[float] = []
    with OpenAITestServer(
        faults_by_text={
            "row 00": Fault.http(429, times=1, retry_after="1.5"),
            "row 01": Fault.http(429, times=1),
            "row 02": Fault.http(429, times=1, retry_after="45"),
        }
    ) as server:
        backend = make_backend(server, max_workers=1, backoff_base=0.2, backoff_max=5.0, sleep=sleeps.append)
        backends.append(backend)
        out = backend.chat(prompts(3))
        assert all(c.ok for c in out)
        assert [len(server.requests_for(f"row 0{i}")) for i in range(3)] == [2, 2, 2]
    assert sleeps[0] == 1.5  # Retry-After honoured (fake sleep: the test does not wait)
    assert 0.1 <= sleeps[1] <= 0.2  # no header: jittered backoff
    assert sleeps[2] == 45.0  # above the 5 s backoff cap, within retry_after_max: the server's wait


def test_408_is_retried_like_the_openai_sdk(backends):
    sleeps: list[float] = []
    with OpenAITestServer(fail_first_n=(408, 2)) as server:
        backend = make_backend(server, max_workers=1, sleep=sleeps.append)
        backends.append(backend)
        assert backend.chat(prompts(1))[0].ok
        assert [r.status for r in server.requests] == [408, 408, 200] and len(sleeps) == 2


def test_retry_after_ms_is_read_and_wins_over_retry_after(backends):
    sleeps: list[float] = []
    with OpenAITestServer(
        faults_by_text={
            "row 00": Fault.http(429, times=1, retry_after_ms="250"),
            "row 01": Fault.http(503, times=1, retry_after="20", retry_after_ms="1500"),
        }
    ) as server:
        backend = make_backend(server, max_workers=1, backoff_base=9.0, backoff_max=9.0, sleep=sleeps.append)
        backends.append(backend)
        assert all(c.ok for c in backend.chat(prompts(2)))
        assert len(server.requests) == 4
    assert sleeps == [0.25, 1.5]


def test_retry_after_beyond_the_maximum_fails_the_row_with_the_servers_wait(backends):
    sleeps: list[float] = []
    with OpenAITestServer(faults_by_text={"row 00": Fault.http(429, retry_after="999")}) as server:
        backend = make_backend(server, max_workers=1, retry_after_max=120, sleep=sleeps.append)
        backends.append(backend)
        out = backend.chat(prompts(2))
        assert out[1].ok and out[0].text is None
        assert "ServingUnavailableError: HTTP 429" in out[0].error and "wait 999 s" in out[0].error
        assert "120 s limit (retry_after_max)" in out[0].error
        assert len(server.requests_for("row 00")) == 1  # no early retry against the server's wish
    assert sleeps == []


def test_real_sleep_with_retry_after_zero(backends):
    with OpenAITestServer(fail_first_n=(429, 3, 0)) as server:
        backend = make_backend(server, max_workers=1, backoff_base=10.0, backoff_max=10.0)
        backends.append(backend)
        start = time.monotonic()
        assert backend.chat(prompts(1))[0].ok
        assert time.monotonic() - start < 2.0  # Retry-After: 0 beats a 10 s backoff
        assert len(server.requests) == 4


def test_backoff_grows_between_attempts(backends):
    sleeps: list[float] = []
    with OpenAITestServer(status_for_text={"row": 502}) as server:
        backend = make_backend(
            server,
            max_retries=4,
            backoff_base=1.0,
            backoff_max=6.0,
            sleep=sleeps.append,
            rng=random.Random(0),
        )
        backends.append(backend)
        out = backend.chat(prompts(1))
        assert "after 5 attempts" in out[0].error
        assert len(server.requests) == 5
    assert len(sleeps) == 4
    for n, (slept, ceiling) in enumerate(zip(sleeps, [1.0, 2.0, 4.0, 6.0], strict=True), start=1):
        assert ceiling / 2 <= slept <= ceiling, (n, slept)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_other_4xx_are_not_retried(backends, status):
    with OpenAITestServer(status_for_text={"row 00": status}) as server:
        backend = make_backend(server)
        backends.append(backend)
        out = backend.chat(prompts(2))
        assert out[1].ok
        assert out[0].text is None
        assert out[0].error.startswith(f"ServingError: HTTP {status} (not retryable): planned failure")
        assert row_outcome(out[0].error) == "failed"  # the request itself is wrong: a rerun would not help
        assert len(server.requests_for("row 00")) == 1
        assert backend.stats.retried == 0


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_configuration_is_not_retried_and_stops_the_run(backends, status):
    with OpenAITestServer(status_for_text={"row 00": status}) as server:
        backend = make_backend(server, max_workers=1)
        backends.append(backend)
        with pytest.raises(ServingConfigError, match=f"HTTP {status}: planned failure"):
            backend.chat(prompts(2))
        assert server.requests.total == 1  # not retried, and row 01 was never sent
        assert backend.stats.retried == 0


def test_hang_past_the_timeout_is_retried_and_then_answered(backends):
    with OpenAITestServer(faults_by_text={"row 01": Fault.hang(10, times=1)}) as server:
        backend = make_backend(server, timeout=0.4)
        backends.append(backend)
        start = time.monotonic()
        out = backend.chat(prompts(3))
        assert time.monotonic() - start < 3.0
        assert [c.text for c in out] == [f"answer to: row 0{i}" for i in range(3)]
        assert len(server.requests_for("row 01")) == 2
        assert backend.stats.extra["retry_causes"] == {"timeout": 1}
        assert_nothing_after_success(server, ["row 00", "row 01", "row 02"])


def test_hang_forever_ends_as_a_timeout_error(backends):
    with OpenAITestServer(faults_by_text={"row 00": Fault.hang(30)}) as server:
        backend = make_backend(server, timeout=0.4, max_retries=1)
        backends.append(backend)
        start = time.monotonic()
        out = backend.chat(prompts(2))
        assert time.monotonic() - start < 3.0
        assert out[1].ok
        assert out[0].error.startswith("ServingUnavailableError: timeout after 2 attempts")
        assert len(server.requests_for("row 00")) == 2
    assert server.alive_threads == 0  # hanging handlers were released at shutdown


def test_closed_connection_is_retried_and_reported(backends):
    with OpenAITestServer(faults_by_text={"row 00": Fault.close(times=2), "row 01": Fault.close()}) as server:
        backend = make_backend(server, max_retries=2, max_workers=1)
        backends.append(backend)
        out = backend.chat(prompts(3))
        assert out[0].text == "answer to: row 00" and out[2].ok
        assert len(server.requests_for("row 00")) == 3
        assert out[1].error.startswith("ServingUnavailableError: connection error after 3 attempts")
        assert "disconnected" in out[1].error.lower() or "reset" in out[1].error.lower()
        assert len(server.requests_for("row 01")) == 3


def test_malformed_json_is_retried_then_reported(backends):
    with OpenAITestServer(faults_by_text={"row 00": Fault.malformed(times=1), "row 01": Fault.malformed()}) as server:
        backend = make_backend(server, max_retries=2)
        backends.append(backend)
        out = backend.chat(prompts(2))
        assert out[0].text == "answer to: row 00"
        assert len(server.requests_for("row 00")) == 2
        assert out[1].text is None and "malformed JSON response after 3 attempts" in out[1].error
        assert len(server.requests_for("row 01")) == 3


def test_empty_choices_is_an_error_not_an_empty_caption(backends):
    with OpenAITestServer(faults_by_text={"row 00": Fault.empty()}) as server:
        backend = make_backend(server)
        backends.append(backend)
        out = backend.chat(prompts(2))
        assert out[0].text is None and "empty answer" in out[0].error and "no choices" in out[0].error
        assert len(server.requests_for("row 00")) == 1  # a well-formed answer: not retried


def test_null_content_is_an_error_not_an_empty_caption(backends):
    def null_for_row_00(body):
        return None if user_text(body) == "row 00" else default_answer(body)

    with OpenAITestServer(answer_fn=null_for_row_00) as server:
        backend = make_backend(server)
        backends.append(backend)
        out = backend.chat(prompts(2))
        assert out[0].text is None
        assert out[0].error == (
            "ServingError: empty answer (not retryable): choice has no text content (finish_reason='length')"
        )
        assert out[1].ok and len(server.requests) == 2


def test_content_parts_and_empty_string_answers(backends):
    answers = {"row 00": "", "row 01": "x"}
    with OpenAITestServer(answer_fn=lambda body: answers[user_text(body)]) as server:
        backend = make_backend(server)
        backends.append(backend)
        out = backend.chat(prompts(2))
        assert [c.text for c in out] == ["", "x"]  # an empty string is the model's answer, not a fault


def test_connection_refused_is_retried_and_reported(backends):
    with OpenAITestServer() as server:
        url = server.base_url
    backend = APIVLMServing_openai(url, "test-model", api_key_env=None, max_retries=2, **FAST)
    backends.append(backend)
    start = time.monotonic()
    out = backend.chat(prompts(2))
    assert time.monotonic() - start < 3.0
    for c in out:
        assert c.error.startswith("ServingUnavailableError: connection error after 3 attempts: ConnectError")
    assert backend.stats.failed == 2 and backend.stats.retried == 4


def test_mixed_faults_every_row_ends_answered_or_with_its_cause(backends):
    faults = {
        "row 01": Fault.http(500, times=1),
        "row 03": Fault.http(429, times=2, retry_after="0"),
        "row 05": Fault.hang(5, times=1),
        "row 07": Fault.close(times=1),
        "row 09": Fault.malformed(times=1),
        "row 11": Fault.http(500),
        "row 13": Fault.http(401),
    }
    with OpenAITestServer(faults_by_text=faults, delay=0.01) as server:
        backend = make_backend(server, max_workers=5, max_retries=2, timeout=0.4)
        backends.append(backend)
        out = backend.chat(prompts(16))
        assert_row_outcomes(out)
        texts = [f"row {i:02d}" for i in range(16)]
        for i, c in enumerate(out):
            if i in (11, 13):
                assert c.text is None
            else:
                assert c.text == f"answer to: {texts[i]}"
        assert "HTTP 500 after 3 attempts" in out[11].error
        assert "HTTP 401" in out[13].error  # after answers: this row only, left pending
        assert row_outcome(out[11].error) == row_outcome(out[13].error) == "pending"
        expected = {1: 2, 3: 3, 5: 2, 7: 2, 9: 2, 11: 3, 13: 1}
        for i, text in enumerate(texts):
            assert len(server.requests_for(text)) == expected.get(i, 1), text
        assert_nothing_after_success(server, texts)
        assert backend.stats.retried == sum(n - 1 for n in expected.values())
        assert backend.stats.failed == 2


# --------------------------------------------------------------------------------------------------
# Configuration, key handling, lifecycle
# --------------------------------------------------------------------------------------------------


def test_api_key_is_read_from_the_named_env_var_and_never_described(backends, monkeypatch):
    monkeypatch.setenv("DFMM_TEST_KEY", "sk-secret-123")
    with OpenAITestServer(api_key="sk-secret-123") as server:
        backend = APIVLMServing_openai(server.base_url, "test-model", api_key_env="DFMM_TEST_KEY", **FAST)
        backends.append(backend)
        assert backend.chat(prompts(1))[0].ok
        assert server.requests[0].authorization == "Bearer sk-secret-123"
        assert "sk-secret" not in repr(backend.describe()) and "sk-secret" not in repr(backend)

        no_key = APIVLMServing_openai(server.base_url, "test-model", api_key_env="DFMM_UNSET_KEY", **FAST)
        backends.append(no_key)
        with pytest.raises(ServingConfigError, match="HTTP 401: Incorrect API key provided"):
            no_key.chat(prompts(1))
        assert server.requests[1].authorization is None

        explicit = APIVLMServing_openai(server.base_url, "test-model", api_key="sk-secret-123", **FAST)
        backends.append(explicit)
        assert explicit.chat(prompts(1))[0].ok


def test_describe_and_model_id(backends):
    backend = APIVLMServing_openai("http://user:pw@127.0.0.1:9/v1?api-key=x", "my-model", api_key="k")
    backends.append(backend)
    info = backend.describe()
    assert backend.model_id == "my-model" and info["model"] == "my-model" and info["backend"] == "api"
    assert info["api_url"] == "http://127.0.0.1:9/v1/chat/completions"
    assert "pw" not in repr(info) and "api-key" not in repr(info)
    # only what shapes the answers: it feeds the resume fingerprint
    assert not {"max_workers", "timeout", "max_retries", "api_key", "api_key_env"} & set(info)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/chat/completions", "http://h:8000/v1/chat/completions"),
        ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1/chat/completions"),
        ("http://h:11434", "http://h:11434/v1/chat/completions"),
    ],
)
def test_chat_completions_url(given, expected):
    assert chat_completions_url(given) == expected


@pytest.mark.parametrize("bad", ["localhost:8000/v1", "ftp://h/v1", ""])
def test_bad_api_url_is_a_user_error(bad):
    with pytest.raises(UserError):
        APIVLMServing_openai(bad, "m")


def test_full_url_and_base_url_both_work(backends):
    with OpenAITestServer() as server:
        for url in (server.base_url, server.base_url + "/chat/completions", server.url):
            backend = APIVLMServing_openai(url, "test-model", api_key_env=None, **FAST)
            backends.append(backend)
            assert backend.chat(prompts(1))[0].ok
        assert [r.path for r in server.requests] == ["/v1/chat/completions"] * 3


def test_cleanup_closes_the_client_and_the_next_call_reopens_it(backends):
    with OpenAITestServer() as server:
        backend = make_backend(server)
        backends.append(backend)
        assert backend.chat(prompts(2))[0].ok
        client = backend._client
        backend.cleanup()
        assert backend._client is None and client.is_closed
        assert backend.chat(prompts(1))[0].ok
        assert backend.stats.calls == 2


def test_server_shuts_down_cleanly_with_open_keepalive_connections(backends):
    server = OpenAITestServer().start()
    backend = make_backend(server)
    backends.append(backend)
    assert all(c.ok for c in backend.chat(prompts(4)))  # keep-alive connections stay open
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 2.0
    assert server.alive_threads == 0


def test_dataflow_mm_constructor_arguments_and_its_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``APIVLMServing_openai(api_url=..., key_name_of_api_key=..., model_name=..., image_io=None,
    send_request_stream=False, max_workers=10, timeout=1800)`` as DataFlow-MM's scripts call it."""
    from dataflow_mm.common.errors import UnsupportedArgumentError

    monkeypatch.setenv("DF_API_KEY", "sk-df")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    with OpenAITestServer(api_key="sk-df") as server:
        backend = APIVLMServing_openai(
            api_url=server.base_url,
            key_name_of_api_key="DF_API_KEY",
            model_name="gpt-4o-mini",
            image_io=None,
            send_request_stream=False,
            max_workers=10,
            timeout=1800,
        )
        assert backend.max_workers == 10 and backend.timeout == 1800.0
        assert backend.chat([build_conversation("hi")])[0].ok
        default = APIVLMServing_openai(api_url=server.base_url, model_name="m")  # DataFlow-MM's default variable
        assert default.api_key_env == "DF_API_KEY" and default.chat([build_conversation("hi")])[0].ok
    monkeypatch.delenv("DF_API_KEY")
    assert APIVLMServing_openai(api_url="http://127.0.0.1:9/v1", model_name="m").api_key_env == "OPENAI_API_KEY"
    with pytest.raises(UnsupportedArgumentError, match="image_io"):
        APIVLMServing_openai(api_url="http://127.0.0.1:9/v1", model_name="m", image_io=object())
    with pytest.raises(UserError, match="key_name_of_api_key"):
        APIVLMServing_openai(api_url="http://127.0.0.1:9/v1", model_name="m", api_key_env="A", key_name_of_api_key="B")


def test_extra_sampling_settings_are_sent_only_when_set() -> None:
    with OpenAITestServer() as server:
        make_backend(server).chat([build_conversation("plain")])
        sampling = SamplingParams(temperature=0.5, top_k=20, repetition_penalty=1.05)
        make_backend(server).chat([build_conversation("tuned")], sampling)
        plain, tuned = (r.body for r in server.requests)
    assert "top_k" not in plain and "repetition_penalty" not in plain
    assert (tuned["top_k"], tuned["repetition_penalty"], tuned["temperature"]) == (20, 1.05, 0.5)
    assert SamplingParams().to_dict() == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 512, "seed": None}


def test_images_that_already_fit_are_sent_as_their_file_bytes(backends, tmp_path):
    """A JPEG/PNG within the size limit, without rotation or alpha, is sent byte for byte (no decode)."""
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (400, 300), (90, 120, 30)).save(photo, quality=77)
    chart = tmp_path / "chart.png"
    Image.new("RGB", (200, 100), (255, 255, 255)).save(chart)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.new("RGB", (400, 300), "white").save(rotated, exif=exif)
    oversize = tmp_path / "oversize.jpg"
    Image.new("RGB", (900, 300), "white").save(oversize)
    webp = tmp_path / "image.webp"
    Image.new("RGB", (64, 64), "white").save(webp)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:-200])
    with OpenAITestServer() as server:
        backend = make_backend(server, max_image_side=512, max_workers=1)
        backends.append(backend)
        rows = [
            build_conversation("photo", [str(photo)]),
            build_conversation("chart", [chart]),
            build_conversation("bytes", [photo.read_bytes()]),
            build_conversation("rotated", [str(rotated)]),
            build_conversation("oversize", [str(oversize)]),
            build_conversation("webp", [str(webp)]),
            build_conversation("truncated", [str(truncated)]),
        ]
        out = backend.chat(rows)
        sent = {r.text: image_urls(r.body)[0] for r in server.requests}
    as_sent = {text: base64.b64decode(url.split(",", 1)[1]) for text, url in sent.items()}
    assert as_sent["photo"] == photo.read_bytes() and sent["photo"].startswith("data:image/jpeg;")
    assert as_sent["chart"] == chart.read_bytes() and sent["chart"].startswith("data:image/png;")
    assert as_sent["bytes"] == photo.read_bytes()
    # these go through the decoder: turned upright, downscaled, re-encoded as JPEG
    assert decode_data_url(sent["rotated"])[1].size == (300, 400)
    assert decode_data_url(sent["oversize"])[1].size == (512, 171)
    mime, img = decode_data_url(sent["webp"])
    assert (mime, img.format) == ("image/jpeg", "JPEG") and as_sent["webp"] != webp.read_bytes()
    assert out[-1].text is None and error_class_of(out[-1].error) == "ImageDecodeError"  # never sent
    assert "truncated" not in sent
