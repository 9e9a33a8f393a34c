"""Keep credentials out of rows, logs, manifests and the report.

A backend registers each secret it holds (``register_secret``); ``scrub`` removes every
registered secret, and any ``Authorization``/``Bearer`` value, from a message before it is
stored or logged. The package log handler scrubs every record too (``ScrubbingFilter``), so a
traceback quoting a request header (as httpx's "Illegal header value" does) cannot leak a key.

A secret is removed as written, JSON-escaped (``\\/`` for ``/``, ``\\"``, ``\\\\``) and URL-encoded, and
so is any run of ``MIN_FRAGMENT`` (8) or more consecutive characters of any of these forms: a message
a server cut in the middle of the key (or that a caller cut) leaves no usable piece of it. Scrub
first, cut after (``dataflow_mm.common.server_text.clean_server_text`` does both in that order).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit, urlunsplit

REDACTED = "***"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # what escape_controls escapes
_PRINTABLE_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # the same, newlines and tabs kept
_BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;}\]\\]+")
_AUTHORIZATION = re.compile(
    r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|token)\s+)?)(?!bearer\s)[^\s\"',;}\]\\]+"
)
_MIN_PART = 4  # pieces of a secret shorter than this are too common to remove safely
MIN_FRAGMENT = 8  # a run of this many characters of a secret is removed wherever it appears

_secrets: set[str] = set()
_fragments: set[str] = set()  # every MIN_FRAGMENT-long piece of every form of every secret
_guard = threading.Lock()


def has_control_characters(value: str) -> bool:
    """Whether ``value`` holds a control character (a trailing ``\\r``/``\\n``, a tab, NUL...)."""
    return bool(_CONTROL.search(value))


def escape_controls(text: str, keep_lines: bool = False) -> str:
    """``text`` with each control character (C0, DEL, C1; ``\\n`` and ``\\t`` too unless ``keep_lines``) written
    as ``\\xNN``: a server's ANSI escape sequence or carriage return cannot restyle or overwrite a terminal line."""
    return (_PRINTABLE_LINES if keep_lines else _PRINTABLE).sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def register_secret(value: str | None) -> None:
    """Remember ``value`` (and its pieces between control characters) so that ``scrub`` removes it."""
    if not value:
        return
    pieces = {value, value.strip(), *_CONTROL.split(value)}
    forms = {form for piece in pieces for form in _written_forms(piece)}
    with _guard:
        _secrets.update(p for p in forms if len(p) >= _MIN_PART)
        for form in forms:
            _fragments.update(form[i : i + MIN_FRAGMENT] for i in range(len(form) - MIN_FRAGMENT + 1))


# Query parameters that sign or authorize a URL: S3 presigned (v2 and v4), GCS signed URLs, Azure SAS,
# and the usual token names. Their values are secrets wherever the URL is shown.
URL_SECRET_PARAMETERS = frozenset(
    {
        "awsaccesskeyid",
        "signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-signature",
        "googleaccessid",
        "x-goog-credential",
        "x-goog-signature",
        "sig",
        "token",
        "access_token",
        "api_key",
        "apikey",
    }
)


def register_url_secrets(url: str) -> None:
    """Register the values of ``url``'s signing query parameters (a presigned URL's signature, session token
    and key id) and its ``user:password@`` password, so that ``scrub`` removes them from logs and error lines
    while the URL itself still works."""
    parts = urlsplit(url)
    for value in _signing_values(parts.query):
        register_secret(value)
    register_secret(parts.password)


def unsigned_url(url: str) -> str:
    """``url`` as a file may record it: an ``http(s)`` URL that a query parameter signs or authorizes (a presigned
    URL) without its query, and any URL without a ``user:password@``; every other ``url`` as it is. One object's
    fresh presigned URLs all give the same form, so a run given a new one resumes where the last one stopped."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return url
    signed = bool(_signing_values(parts.query))
    host = parts.netloc.rpartition("@")[2]
    if not signed and host == parts.netloc:
        return url
    return urlunsplit((parts.scheme, host, parts.path, "" if signed else parts.query, "" if signed else parts.fragment))


def _signing_values(query: str) -> list[str]:
    """The values of a URL query's parameters that sign or authorize it (``URL_SECRET_PARAMETERS``)."""
    return [value for name, value in parse_qsl(query) if name.lower() in URL_SECRET_PARAMETERS]


def _written_forms(value: str) -> set[str]:
    """``value`` as written, JSON-escaped (with and without ``\\/``) and URL-encoded."""
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    return {value, escaped, escaped.replace("/", "\\/"), quote(value, safe=""), quote(value), quote_plus(value)}


def _fragment_spans(text: str, fragments: set[str]) -> list[tuple[int, int]]:
    """The merged spans of ``text`` covered by any of ``fragments`` (all of one length)."""
    spans: list[tuple[int, int]] = []
    for fragment in fragments:
        start = text.find(fragment)
        while start != -1:
            spans.append((start, start + len(fragment)))
            start = text.find(fragment, start + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def scrub_secrets(text: str) -> str:
    """``text`` without any registered secret (longest first, so no piece of one is left behind)."""
    with _guard:
        secrets = sorted(_secrets, key=len, reverse=True)
        fragments = set(_fragments)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    spans = _fragment_spans(text, fragments) if fragments else []
    if not spans:
        return text
    parts, position = [], 0
    for start, end in spans:
        parts += [text[position:start], REDACTED]
        position = end
    return "".join(parts) + text[position:]


def scrub(text: str) -> str:
    """``text`` without registered secrets and without ``Authorization``/``Bearer`` values."""
    text = scrub_secrets(text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", text)


class ScrubbingFilter(logging.Filter):
    """A handler filter that scrubs a record's message and traceback before it is written, and escapes
    their control characters (but newlines and tabs): a server's text may hold ANSI escape sequences."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = escape_controls(scrub(message), keep_lines=True)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = escape_controls(scrub(record.exc_text), keep_lines=True)
        return True
