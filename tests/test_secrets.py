"""dataflow_mm.common.secrets: registered keys and Authorization/Bearer values never reach a message or a log line."""

from __future__ import annotations

import io
import logging

from dataflow_mm.common.secrets import REDACTED, ScrubbingFilter, has_control_characters, register_secret, scrub

KEY = "sk-unit-scrub-4b1d9e"


def test_scrub_removes_a_registered_key_and_its_pieces():
    register_secret(KEY + "\r\n")
    assert KEY not in scrub(f"Illegal header value b'Bearer {KEY}\\r\\n'")
    assert scrub(f"Incorrect API key provided: {KEY}.") == f"Incorrect API key provided: {REDACTED}."


def test_scrub_removes_any_authorization_or_bearer_value():
    text = scrub('headers: {"Authorization": "Bearer abc.def-123", "x": 1}; authorization=xyz789 token')
    assert "abc.def-123" not in text and "xyz789" not in text
    assert scrub("Bearer   other-secret") == f"Bearer   {REDACTED}"
    assert scrub("no secret here") == "no secret here"


def test_control_characters_are_detected():
    assert has_control_characters("sk-1\r") and has_control_characters("a\nb") and has_control_characters("\tx")
    assert not has_control_characters("sk-plain_key.123")


def test_the_log_filter_scrubs_messages_and_tracebacks():
    register_secret(KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubbingFilter())
    logger = logging.getLogger("test_secrets_scrub")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("request failed: %s", f"key {KEY}")
        try:
            raise ValueError(f"Illegal header value b'Bearer {KEY}\\r'")
        except ValueError:
            logger.warning("unexpected", exc_info=True)
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "request failed" in written and "ValueError" in written
    assert KEY not in written


def test_a_signed_urls_signature_token_and_key_id_are_registered_its_other_parameters_kept():
    from dataflow_mm.common.secrets import register_url_secrets

    url = (
        "https://acct.blob.core.windows.net/c/part-0.parquet?sv=2024-11-04&se=2026-12-08T00%3A00%3A00Z"
        "&sig=K3yP%2Bart0fTheSAS%3D&X-Amz-Credential=AKIAEXAMPLEKEYID%2F20261207&X-Amz-Signature=9f86d081884c7d65"
    )
    register_url_secrets(url)
    shown = scrub(f"could not read '{url}'")
    assert "K3yP" not in shown and "AKIAEXAMPLEKEYID" not in shown and "9f86d081884c7d65" not in shown
    assert "sv=2024-11-04" in shown and "part-0.parquet" in shown


def test_a_url_is_recorded_without_its_signature_or_password_and_any_other_url_as_it_is():
    from dataflow_mm.common.secrets import unsigned_url

    signed = [
        "https://bucket.s3.amazonaws.com/data/part-0.parquet?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=9f86",
        "https://bucket.s3.amazonaws.com/data/part-0.parquet?AWSAccessKeyId=AKIA&Signature=abc%3D&Expires=1765000000",
        "https://bucket.s3.amazonaws.com/data/part-0.parquet?x-amz-security-token=IQoJ&X-Amz-Date=20261208T000000Z",
    ]
    assert {unsigned_url(url) for url in signed} == {"https://bucket.s3.amazonaws.com/data/part-0.parquet"}
    assert unsigned_url("https://me:hunter2@host:8443/t.jsonl?page=2#top") == "https://host:8443/t.jsonl?page=2#top"
    for kept in (
        "https://host/t.jsonl?page=2",
        "s3://bucket/part-*.parquet",
        "hf://datasets/org/name/data/train.parquet",
        "/data/shards/part-?.jsonl",
        "relative/table.jsonl",
    ):
        assert unsigned_url(kept) == kept


def test_the_password_of_a_url_is_registered_too():
    from dataflow_mm.common.secrets import register_url_secrets

    url = "https://reader:Pa55w0rdOfTheBucket@data.example.org/shards/part-0.jsonl"
    register_url_secrets(url)
    shown = scrub(f"cannot read input shard '{url}': 403")
    assert "Pa55w0rdOfTheBucket" not in shown and "reader:" in shown and "part-0.jsonl" in shown
