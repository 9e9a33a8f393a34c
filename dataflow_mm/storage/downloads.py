"""Download ``http(s)://`` images once into the media cache, with the API backend's network rules.

Rules shared with :class:`dataflow_mm.serving.api_serving.APIVLMServing_openai`: ``timeout`` seconds
for a whole attempt, reply included (default 60, ``--download_timeout``: a server sending one byte per
second is cut off when the time is up, by the same watchdog as the API requests,
``dataflow_mm.common.deadline.Deadline``), up to ``max_retries`` retries (default 3) on HTTP 429, 5xx,
connection errors and timeouts, with the same jittered exponential backoff and ``Retry-After``
handling (:class:`dataflow_mm.common.retry.RetryPolicy`); any other 4xx is final. A reply larger than
``max_bytes`` (default 64 MiB, checked against ``Content-Length`` and while reading) is refused.
Every hop of a redirect must be ``http(s)``. A URL holding a user name or password
(``http://alice:PW@host/x.png``) is refused: the URL is written with the row, so the password would
be; errors show it masked (``alice:***@``). Server text in errors is scrubbed and escaped
(``dataflow_mm.common.server_text``).

A download that failed for want of an answer (connection refused or reset, timeout, 408/429/5xx, each
after the retries) is an ``ImageUnavailableError``: the row stays *pending* and a rerun tries again, as
Spark and Ray Data retry a task whose remote read failed rather than dropping its data. Every other
failure (404, 403, a reply over the cap, not an image URL, credentials in the URL) is an
``ImageDownloadError``: the row *fails*.

The file is stored content-addressed (``{stem}_{sha256[:16]}{suffix}``) and an index file per URL
(``.urls/<sha256(url)>``) lets every later step and every re-run find it without downloading again.
"""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from dataflow_mm.common.deadline import Deadline
from dataflow_mm.common.errors import ImageDownloadError, ImageUnavailableError
from dataflow_mm.common.retry import RetryPolicy, is_retryable_status
from dataflow_mm.common.server_text import clean_server_text
from dataflow_mm.storage.atomic import write_bytes_atomic
from dataflow_mm.storage.media_bytes import store_bytes

DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_MAX_RETRIES = 3
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
URL_SCHEMES = ("http", "https")
_READ_BLOCK = 1 << 16
_INDEX_DIR = ".urls"
_SHOWN_URL_CHARS = 200
_MAX_MESSAGE_CHARS = 600
MASK = "***"


class _Failure(Exception):
    def __init__(self, message: str, retryable: bool, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def _index_file(url: str, cache_dir: Path) -> Path:
    return cache_dir / _INDEX_DIR / hashlib.sha256(url.encode("utf-8")).hexdigest()


def _has_credentials(parts: SplitResult) -> bool:
    return "@" in parts.netloc


def mask_credentials(url: str) -> str:
    """``url`` with the password of its user info masked (``alice:***@``; a user info without ``:``, which
    may be a token, is masked whole). A URL that cannot be split is returned as it is."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not _has_credentials(parts):
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    masked = f"{user}:{MASK}" if user else MASK
    return urlunsplit((parts.scheme, f"{masked}@{host}", parts.path, parts.query, parts.fragment))


def _shown(url: str) -> str:
    return mask_credentials(url)[:_SHOWN_URL_CHARS]


def cached_download(url: str, cache_dir: Path) -> Path | None:
    """The media file already downloaded for ``url`` (None when there is none)."""
    try:
        name = _index_file(url, cache_dir).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = cache_dir / name
    return path if name and path.is_file() else None


def _check_hop(url: str) -> None:
    """Refuse a URL (the first or one a redirect leads to) that is not http(s) or that holds credentials."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _Failure(f"malformed URL {_shown(url)}: {exc}", False) from None
    if parts.scheme.lower() not in URL_SCHEMES:
        raise _Failure(f"not an http(s) URL: {_shown(url)}", False)
    if _has_credentials(parts):
        raise _Failure(
            f"the URL holds a user name or password ({_shown(url)}): credentials in image URLs are not supported "
            "(the URL is written with the row); serve the image without them or download it first",
            False,
        )


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another http(s) URL without credentials (urllib also follows ``ftp://``)."""

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri")
        if location:
            try:
                _check_hop(urljoin(req.full_url, location))
            except _Failure as failure:
                fp.close()
                raise _Failure(f"HTTP {code} redirect refused: {failure}", False) from None
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _watched(base: type[http.client.HTTPConnection], deadline: Deadline) -> type[http.client.HTTPConnection]:
    """``base`` whose socket ``deadline`` cuts when the time is up (set before TLS, so a slow handshake is too)."""

    class Watched(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            create = self._create_connection
            self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))

    return Watched


def _opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(_watched(http.client.HTTPConnection, deadline), req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(_watched(http.client.HTTPSConnection, deadline), req, context=self._context)

    return urllib.request.build_opener(HTTP, HTTPS, _HttpOnlyRedirects)


def _fetch_once(url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "dataflow-mm"})
    deadline = Deadline(timeout)  # the whole attempt, not each read: a trickling server cannot stretch it
    too_slow = f"no complete download within {timeout:g} s (download_timeout)"
    try:
        with deadline, _opener(deadline).open(request, timeout=timeout) as reply:
            declared = reply.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _Failure(f"the reply declares {declared} bytes, above the cap of {max_bytes}", False)
            data = bytearray()
            while block := reply.read(_READ_BLOCK):
                data += block
                if len(data) > max_bytes:
                    raise _Failure(f"the reply is larger than the cap of {max_bytes} bytes", False)
        if deadline.expired:  # a reply without a length ends silently when its socket is cut
            raise _Failure(too_slow, True)
        return bytes(data)
    except urllib.error.HTTPError as exc:
        status = exc.code
        raise _Failure(f"HTTP {status}", is_retryable_status(status), exc.headers.get("Retry-After")) from exc
    except (TimeoutError, urllib.error.URLError, OSError, http.client.IncompleteRead) as exc:
        if deadline.expired:
            raise _Failure(too_slow, True) from exc
        reason = getattr(exc, "reason", exc)
        raise _Failure(f"connection error or timeout ({reason})", True) from exc
    except (ValueError, http.client.HTTPException) as exc:  # a malformed URL or reply
        if deadline.expired:
            raise _Failure(too_slow, True) from exc
        raise _Failure(f"{type(exc).__name__}: {exc}", False) from exc


def _error(url: str, message: str, pending: bool = False) -> ImageDownloadError:
    """A row's download error (``ImageUnavailableError`` when no answer came: pending): the URL masked, the
    server's text scrubbed and escaped, then cut."""
    kind = ImageUnavailableError if pending else ImageDownloadError
    return kind(clean_server_text(f"cannot download {_shown(url)}: {message}", _MAX_MESSAGE_CHARS))


def download_image(
    url: str,
    cache_dir: Path,
    *,
    timeout: float | None = None,
    max_retries: int = DOWNLOAD_MAX_RETRIES,
    max_bytes: int | None = None,
    backoff_base: float = 1.0,
) -> Path:
    """The local media file for ``url``, downloaded now unless an earlier download is cached.

    ``timeout`` (the whole of each attempt) defaults to ``DOWNLOAD_TIMEOUT_S`` and ``max_bytes`` to
    ``MAX_DOWNLOAD_BYTES`` (both read at call time).
    """
    cache_dir = Path(cache_dir)
    found = cached_download(url, cache_dir)
    if found is not None:
        return found
    try:
        _check_hop(url)
    except _Failure as failure:
        raise ImageDownloadError(clean_server_text(str(failure), _MAX_MESSAGE_CHARS)) from None
    seconds = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    policy = RetryPolicy(max_retries=max_retries, backoff_base=backoff_base)
    attempt = 0
    while True:
        attempt += 1
        try:
            data = _fetch_once(url, seconds, MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes)
            break
        except _Failure as failure:
            if not policy.should_retry(attempt, failure.retryable):
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise _error(url, f"{failure}{tries}", pending=failure.retryable) from None
            time.sleep(policy.delay(attempt, failure.retry_after))
    if not data:
        raise _error(url, "the reply is empty (0 bytes)")
    return remember_download(url, data, cache_dir)


def remember_download(url: str, data: bytes, cache_dir: Path) -> Path:
    """Store the bytes fetched for ``url`` (content-addressed) and index them under the URL; the stored path."""
    stored = store_bytes(data, cache_dir, urlsplit(url).path.rsplit("/", 1)[-1] or None)
    write_bytes_atomic(stored.name.encode("utf-8"), _index_file(url, cache_dir))
    return stored
