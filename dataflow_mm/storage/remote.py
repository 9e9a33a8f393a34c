"""Files behind a URL (``s3://``, ``gs://``, ``hf://``, ``http(s)://``, any fsspec protocol), read through fsspec.

Credentials are found the way each library finds them (``AWS_*`` variables and ``~/.aws``, the
Google application credentials, ``HF_TOKEN``/the hub's login, fsspec's own ``FSSPEC_<PROTOCOL>_*``
variables and config files); nothing here reads or writes them. A custom S3 endpoint (MinIO, a
local server) comes from ``AWS_ENDPOINT_URL`` (botocore) or ``FSSPEC_S3_ENDPOINT_URL`` (fsspec).

fsspec and the protocol's package (``s3fs``, ``gcsfs``) are optional: a missing one is one
``MissingDependencyError`` naming the pip line (``pip install 'dataflow-mm[remote]'``).
"""

from __future__ import annotations

import re
from typing import Any

from dataflow_mm.common.errors import MissingDependencyError, StorageError

REMOTE_EXTRA = "remote"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_BRACE_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}


def scheme_of(source: str) -> str | None:
    """The URL scheme of ``source`` (``s3``, ``https``...), lower case; None for a plain path."""
    match = _SCHEME.match(source)
    return match.group(1).lower() if match else None


def is_remote(source: Any) -> bool:
    """True for a URL that is not a local ``file://`` path."""
    return isinstance(source, str) and scheme_of(source) not in (None, "file")


def url_path(source: str) -> str:
    """``source`` without the query and fragment of an ``http(s)`` URL (``?X-Amz-Signature=...`` of a
    presigned URL is not part of the file's name); any other source as it is."""
    if scheme_of(source) in ("http", "https"):
        return source.split("#", 1)[0].split("?", 1)[0]
    return source


def has_glob(source: str) -> bool:
    """True when the file name part of ``source`` holds a glob character (``*``, ``?``, ``[``)."""
    return any(c in url_path(source) for c in "*?[")


def has_pattern(source: str) -> bool:
    """True when ``source`` names several files: a glob (``*``, ``?``, ``[``) or a brace list/range."""
    name = url_path(source)
    return has_glob(source) or bool(_BRACE_RANGE.search(name) or _BRACE_LIST.search(name))


def expand_braces(pattern: str) -> list[str]:
    """``shard-{000..002}.tar`` -> ``shard-000.tar``, ``shard-001.tar``, ``shard-002.tar`` (zero padding kept);
    ``{a,b}`` lists too, several groups multiply (WebDataset's shard notation)."""
    found = [m for m in (_BRACE_RANGE.search(pattern), _BRACE_LIST.search(pattern)) if m is not None]
    if not found:
        return [pattern]
    match = min(found, key=lambda m: m.start())  # the leftmost group varies slowest, as in bash
    if match.re is _BRACE_RANGE:
        first, last = match.group(1), match.group(2)
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        step = 1 if int(last) >= int(first) else -1
        items = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        items = match.group(1).split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for item in items for name in expand_braces(f"{head}{item}{tail}")]


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for ``url``; a MissingDependencyError names the pip line."""
    scheme = scheme_of(url) or "file"
    hint = f"Install it with: pip install 'dataflow-mm[{REMOTE_EXTRA}]'"
    try:
        import fsspec.core
    except ImportError:
        raise MissingDependencyError(f"reading '{url[:120]}' needs fsspec, which is not installed. {hint}") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package = _PACKAGES.get(scheme, f"the fsspec implementation of '{scheme}://'")
        raise MissingDependencyError(
            f"reading {scheme}:// URLs needs {package}, which is not installed ({exc}). "
            f"{hint}  (or: pip install {package})"
        ) from None
    except ValueError as exc:  # an unknown protocol
        raise StorageError(f"cannot read '{url[:200]}': {exc}") from None


def full_url(fs: Any, path: str) -> str:
    """``path`` of ``fs`` with its protocol again (``bucket/a.parquet`` -> ``s3://bucket/a.parquet``)."""
    return fs.unstrip_protocol(path) if not fs_is_local(fs) else path


def fs_is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def version_of(info: dict[str, Any]) -> str | None:
    """What changes when an object is rewritten: its ETag, generation or mtime (whichever the store gives)."""
    for key in ("ETag", "etag", "generation", "md5Hash", "LastModified", "mtime", "last_modified", "created"):
        value = info.get(key)
        if value is not None:
            return str(value)
    return None


def check_posix_cache_path(cache_path: str) -> str:
    """``cache_path`` unless it names object storage: the cache needs renames, locks and appends, which
    only a POSIX filesystem (local, NFS, Lustre...) gives; inputs may live in a bucket, the cache may not."""
    if is_remote(cache_path):
        raise StorageError(
            f"cache_path '{cache_path}' is object storage: the cache must be a folder on a POSIX filesystem "
            "(local or shared); inputs may be s3://, gs://, hf:// or http(s):// URLs"
        )
    return cache_path.removeprefix("file://")
