"""Image cells that are object-store URLs (``s3://``, ``gs://``, ``hf://``...): fetched once through fsspec.

Like an ``http(s)://`` download (:mod:`dataflow_mm.storage.downloads`, whose index this shares), the
bytes are stored content-addressed in the media cache and indexed by URL, so every later step and every
rerun finds them without fetching again. Retries are the filesystem library's own (s3fs, gcsfs). A
missing object, a denied one or one over the size cap is an ``ImageDownloadError`` for that row; a
missing library is a ``MissingDependencyError`` for the run.
"""

from __future__ import annotations

from pathlib import Path

from dataflow_mm.common.errors import ImageDownloadError, MissingDependencyError
from dataflow_mm.storage.downloads import MAX_DOWNLOAD_BYTES, cached_download, remember_download
from dataflow_mm.storage.remote import filesystem


def fetch_remote_image(url: str, cache_dir: Path, max_bytes: int | None = None) -> Path:
    """The local media file for an object-store ``url``, fetched now unless an earlier fetch is cached."""
    cache_dir = Path(cache_dir)
    found = cached_download(url, cache_dir)
    if found is not None:
        return found
    cap = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes
    try:
        fs, path = filesystem(url)
        size = fs.size(path)
        if size is not None and size > cap:
            raise ImageDownloadError(f"cannot fetch {url[:200]}: {size} bytes, above the cap of {cap}")
        data = fs.cat_file(path)
    except (ImageDownloadError, MissingDependencyError):
        raise
    except Exception as exc:  # FileNotFoundError, PermissionError, the store's client errors: one row's failure
        raise ImageDownloadError(f"cannot fetch {url[:200]}: {type(exc).__name__}: {exc}") from None
    if not data:
        raise ImageDownloadError(f"cannot fetch {url[:200]}: the object is empty (0 bytes)")
    return remember_download(url, data, cache_dir)
