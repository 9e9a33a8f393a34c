"""Keep credentials out of rows, logs, manifests and the report.

A backend registers each secret it holds (``register_secret``); ``scrub`` removes every
registered secret, and any ``Authorization``/``Bearer`` value, from a message before it is
stored or logged. The package log handler scrubs every record too (``ScrubbingFilter``), so a
traceback quoting a request header (as httpx's "Illegal header value" does) cannot leak a key.
"""

from __future__ import annotations

import logging
import re
import threading

REDACTED = "***"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;}\]\\]+")
_AUTHORIZATION = re.compile(
    r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|token)\s+)?)(?!bearer\s)[^\s\"',;}\]\\]+"
)
_MIN_PART = 4  # pieces of a secret shorter than this are too common to remove safely

_secrets: set[str] = set()
_guard = threading.Lock()


def has_control_characters(value: str) -> bool:
    """Whether ``value`` holds a control character (a trailing ``\\r``/``\\n``, a tab, NUL...)."""
    return bool(_CONTROL.search(value))


def register_secret(value: str | None) -> None:
    """Remember ``value`` (and its pieces between control characters) so that ``scrub`` removes it."""
    if not value:
        return
    pieces = {value, value.strip(), *_CONTROL.split(value)}
    with _guard:
        _secrets.update(p for p in pieces if len(p) >= _MIN_PART)


def scrub_secrets(text: str) -> str:
    """``text`` without any registered secret (longest first, so no piece of one is left behind)."""
    with _guard:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub(text: str) -> str:
    """``text`` without registered secrets and without ``Authorization``/``Bearer`` values."""
    text = scrub_secrets(text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", text)


class ScrubbingFilter(logging.Filter):
    """A handler filter that scrubs a record's message and traceback before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True
