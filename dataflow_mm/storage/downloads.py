"""Download ``http(s)://`` images once into the media cache, with the API backend's network rules.

Rules shared with :class:`dataflow_mm.serving.api_serving.APIVLMServing_openai`: ``timeout`` seconds
per attempt (default 60), up to ``max_retries`` retries (default 3) on HTTP 429, 5xx, connection
errors and timeouts, with the same jittered exponential backoff and ``Retry-After`` handling
(:class:`dataflow_mm.common.retry.RetryPolicy`); any other 4xx is final. A reply larger than
``max_bytes`` (default 64 MiB, checked against ``Content-Length`` and while reading) is refused.

A download that failed for want of an answer (connection refused or reset, timeout, 408/429/5xx, each
after the retries) is an ``ImageUnavailableError``: the row stays *pending* and a rerun tries again, as
Spark and Ray Data retry a task whose remote read failed rather than dropping its data. Every other
failure (404, 403, a reply over the cap, not an image URL) is an ``ImageDownloadError``: the row *fails*.

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
from urllib.parse import urlsplit

from dataflow_mm.common.errors import ImageDownloadError, ImageUnavailableError
from dataflow_mm.common.retry import RetryPolicy, is_retryable_status
from dataflow_mm.storage.atomic import write_bytes_atomic
from dataflow_mm.storage.media_bytes import store_bytes

DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_MAX_RETRIES = 3
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
_READ_BLOCK = 1 << 16
_INDEX_DIR = ".urls"


class _Failure(Exception):
    def __init__(self, message: str, retryable: bool, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def _index_file(url: str, cache_dir: Path) -> Path:
    return cache_dir / _INDEX_DIR / hashlib.sha256(url.encode("utf-8")).hexdigest()


def cached_download(url: str, cache_dir: Path) -> Path | None:
    """The media file already downloaded for ``url`` (None when there is none)."""
    try:
        name = _index_file(url, cache_dir).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = cache_dir / name
    return path if name and path.is_file() else None


def _fetch_once(url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "dataflow-mm"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            declared = reply.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _Failure(f"the reply declares {declared} bytes, above the cap of {max_bytes}", False)
            data = bytearray()
            while block := reply.read(_READ_BLOCK):
                data += block
                if len(data) > max_bytes:
                    raise _Failure(f"the reply is larger than the cap of {max_bytes} bytes", False)
            return bytes(data)
    except urllib.error.HTTPError as exc:
        status = exc.code
        raise _Failure(f"HTTP {status}", is_retryable_status(status), exc.headers.get("Retry-After")) from exc
    except (TimeoutError, urllib.error.URLError, OSError, http.client.IncompleteRead) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Failure(f"connection error or timeout ({reason})", True) from exc
    except (ValueError, http.client.HTTPException) as exc:  # a malformed URL or reply
        raise _Failure(f"{type(exc).__name__}: {exc}", False) from exc


def download_image(
    url: str,
    cache_dir: Path,
    *,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    max_retries: int = DOWNLOAD_MAX_RETRIES,
    max_bytes: int | None = None,
    backoff_base: float = 1.0,
) -> Path:
    """The local media file for ``url``, downloaded now unless an earlier download is cached.

    ``max_bytes`` defaults to ``MAX_DOWNLOAD_BYTES`` (read at call time).
    """
    cache_dir = Path(cache_dir)
    found = cached_download(url, cache_dir)
    if found is not None:
        return found
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ImageDownloadError(f"malformed URL {url[:200]}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ImageDownloadError(f"not an http(s) URL: {url[:200]}")
    policy = RetryPolicy(max_retries=max_retries, backoff_base=backoff_base)
    attempt = 0
    while True:
        attempt += 1
        try:
            data = _fetch_once(url, timeout, MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes)
            break
        except _Failure as failure:
            if not policy.should_retry(attempt, failure.retryable):
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                kind = ImageUnavailableError if failure.retryable else ImageDownloadError
                raise kind(f"cannot download {url[:200]}: {failure}{tries}") from None
            time.sleep(policy.delay(attempt, failure.retry_after))
    if not data:
        raise ImageDownloadError(f"cannot download {url[:200]}: the reply is empty (0 bytes)")
    return remember_download(url, data, cache_dir)


def remember_download(url: str, data: bytes, cache_dir: Path) -> Path:
    """Store the bytes fetched for ``url`` (content-addressed) and index them under the URL; the stored path."""
    stored = store_bytes(data, cache_dir, urlsplit(url).path.rsplit("/", 1)[-1] or None)
    write_bytes_atomic(stored.name.encode("utf-8"), _index_file(url, cache_dir))
    return stored
