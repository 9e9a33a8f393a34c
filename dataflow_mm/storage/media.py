"""Where the images a table refers to live, whatever form the image cell has.

An image cell may hold:

* a path (absolute, or relative to the current folder or to the input table's folder);
* a list of paths (DataFlow-MM's sample format): the first image is the one used, and
  :func:`image_count` tells operators how many there were so they can say so;
* a Hugging Face ``datasets`` Image struct ``{"bytes": ..., "path": ...}`` (bytes-only,
  path-only or both: the bytes win) or raw bytes (Parquet/Arrow shards);
* an ``http(s)://`` URL, downloaded once into the media cache (:mod:`dataflow_mm.storage.downloads`);
* an object-store URL (``s3://``, ``gs://``, ``hf://``...), fetched once through fsspec
  (:mod:`dataflow_mm.storage.remote_media`).

Bytes are never kept in step files. :func:`externalize_media` writes them once to a
content-addressed file under ``{cache_path}/media/`` and leaves a reference in the cell: a struct
becomes ``{"bytes": None, "path": "<media file>"}`` (same shape, path-only), raw bytes become the
media file's path. That rule holds for every ``cache_type``, so JSONL/JSON/CSV step files stay
small text and Parquet step files keep the struct column readable by ``datasets``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dataflow_mm.common.errors import MissingFieldError
from dataflow_mm.storage.atomic import AtomicFile, DurableBatch, remove_stale_temps_in
from dataflow_mm.storage.downloads import download_image, mask_credentials
from dataflow_mm.storage.hashing import remember_sha256
from dataflow_mm.storage.media_bytes import fallback_cache_dir, store_bytes
from dataflow_mm.storage.naming import digest_name, safe_stem
from dataflow_mm.storage.remote import is_remote

MEDIA_DIR_NAME = "media"
IMAGE_COLUMN = "image"  # the image column of the tables built from a folder of images or WebDataset shards
URL_PREFIXES = ("http://", "https://")
STRUCT_KEYS = frozenset({"bytes", "path"})
_BYTES = (bytes, bytearray, memoryview)


def media_cache_dir(cache_path: str | os.PathLike) -> Path:
    """The folder under a cache path that holds images stored from bytes and downloads."""
    return Path(cache_path) / MEDIA_DIR_NAME


def is_image_struct(value: Any) -> bool:
    """True for a Hugging Face Image struct: a dict whose keys are among ``bytes`` and ``path``."""
    return isinstance(value, dict) and bool(value) and set(value) <= STRUCT_KEYS


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value)


def image_count(value: Any) -> int:
    """How many images a cell holds (a list counts its items; any other non-empty value is one)."""
    if _is_list(value):
        return len(value)
    return 0 if _is_empty(value) else 1


def _local_path(value: str | Path, media_root: Path | None) -> Path:
    path = Path(value)
    with contextlib.suppress(RuntimeError):  # "~nosuchuser/a.jpg": kept as written, reported missing later
        path = path.expanduser()
    if path.is_absolute() or _exists(path) or media_root is None:
        return path
    candidate = media_root / path
    return candidate if _exists(candidate) else path


def _exists(path: Path) -> bool:
    """``path.exists()`` that says False, instead of raising, for a name the OS cannot take
    (a component over 255 bytes, a NUL byte, a lone surrogate)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_media_path(
    value: object, media_root: Path | None = None, cache_dir: Path | None = None, download_timeout: float | None = None
) -> Path:
    """The local file a table cell stands for (see the module docstring for the forms).

    Relative paths are tried against the current directory first (as the seed's ``./data/...``
    paths expect), then against ``media_root`` (the folder of the input table). Bytes are stored
    and URLs downloaded under ``cache_dir`` (each attempt within ``download_timeout`` s). A missing
    file is reported later by the image loader, with the path as given; a failed download raises
    ``ImageDownloadError`` (a row error).
    """
    if _is_list(value):
        if len(value) == 0:
            raise MissingFieldError("the image field is an empty list")
        value = value[0]
    if _is_empty(value):
        raise MissingFieldError("the image field is empty")
    if isinstance(value, dict):
        if not is_image_struct(value):
            raise MissingFieldError(
                f"the image field is a dict with keys {sorted(map(str, value))[:6]}: expected a path, a list of "
                "paths, bytes, a URL or a {'bytes', 'path'} struct"
            )
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, _BYTES) and len(data):
            return store_bytes(data, cache_dir, path if isinstance(path, str) else None)
        if isinstance(path, str) and path:
            return resolve_media_path(path, media_root, cache_dir, download_timeout)
        raise MissingFieldError("the image struct has neither bytes nor a path")
    if isinstance(value, _BYTES):
        if not len(value):
            raise MissingFieldError("the image field holds 0 bytes")
        return store_bytes(value, cache_dir)
    if isinstance(value, str) and value.lower().startswith(URL_PREFIXES):
        folder = cache_dir if cache_dir is not None else fallback_cache_dir()
        return download_image(value, folder, timeout=download_timeout)
    if is_remote(value):  # s3://, gs://, hf://...: through fsspec
        from dataflow_mm.storage.remote_media import fetch_remote_image

        return fetch_remote_image(str(value), cache_dir if cache_dir is not None else fallback_cache_dir())
    if not isinstance(value, (str, Path)):
        raise MissingFieldError(
            f"the image field must be a path, a list of paths, bytes, a URL or a {{'bytes', 'path'}} struct, "
            f"not {type(value).__name__}: {str(value)[:100]!r}"
        )
    return _local_path(value, media_root)


def several_images_note(value: Any, key: str) -> str | None:
    """The row note of an operator that uses only the first image of a list cell (None for one image)."""
    count = image_count(value)
    return f"'{key}' holds {count} images; only the first was used" if count > 1 else None


def _holds_credentials(value: Any) -> bool:
    """A URL with a user name or password (``http://alice:PW@host/x.png``), alone, in a list or a struct."""
    if isinstance(value, str):
        return "@" in value and value[:8].lower().startswith(URL_PREFIXES) and mask_credentials(value) != value
    if isinstance(value, dict):
        return _holds_credentials(value.get("path"))
    return _is_list(value) and any(_holds_credentials(v) for v in value if not isinstance(v, (int, float)))


def _externalized(value: Any, cache_dir: Path) -> Any:
    if isinstance(value, str):
        return mask_credentials(value) if _holds_credentials(value) else value
    if isinstance(value, _BYTES):
        return str(store_bytes(value, cache_dir)) if len(value) else None
    if is_image_struct(value) and isinstance(value.get("bytes"), _BYTES) and len(value["bytes"]):
        path = value.get("path")
        stored = store_bytes(value["bytes"], cache_dir, path if isinstance(path, str) else None)
        return {"bytes": None, "path": str(stored)}
    if is_image_struct(value) and _holds_credentials(value):
        return {**value, "path": mask_credentials(value["path"])}
    if _is_list(value) and any(isinstance(v, (*_BYTES, str)) or is_image_struct(v) for v in value):
        return [_externalized(v, cache_dir) for v in value]
    return value


_SCALARS = (str, int, float, type(None))  # never bytes: skipped without a call (boxes are lists of numbers)


def _holds_bytes(value: Any) -> bool:
    if isinstance(value, _SCALARS):
        return False
    if isinstance(value, _BYTES):
        return True
    if isinstance(value, dict):
        return isinstance(value.get("bytes"), _BYTES)
    return _is_list(value) and any(_holds_bytes(v) for v in value if not isinstance(v, _SCALARS))


def externalize_media(
    frame: pd.DataFrame, cache_dir: Path | None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """``frame`` with every image held as bytes stored under ``cache_dir`` and referenced instead, and every
    URL's password masked (``http://alice:***@host/x.png``: such a URL is refused, and no file may hold it).

    Only object columns are scanned; a frame without bytes or credentials is returned as it is (no copy).
    """
    names = [c for c in (columns if columns is not None else frame.columns) if frame[c].dtype == object]
    touched = [c for c in names if any(_holds_bytes(v) or _holds_credentials(v) for v in frame[c].tolist())]
    if not touched:
        return frame
    folder = Path(cache_dir) if cache_dir is not None else fallback_cache_dir()
    out = frame.copy()
    for name in touched:
        out[name] = [_externalized(v, folder) for v in out[name].tolist()]
    return out


def prepare_image_folder(folder: Path) -> Path:
    """Create ``folder`` for ``write_jpeg`` and remove the temp files a killed run left there; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps_in(folder, ".jpg")
    return folder


def write_jpeg(image: Any, folder: Path, stem: str, quality: int, batch: DurableBatch | None = None) -> str:
    """Store a drawn image (boxes, a difference panel) as ``{folder}/{stem}_{content hash}.jpg``; its path.

    The one way operators write media: encoded once, straight into a temp file beside the target (Pillow
    releases the GIL while it encodes to a file, not into memory), named by its bytes (the same drawing
    is one file, so a resumed or repeated step rewrites nothing), renamed only when the target is absent.
    Without ``batch`` the file is durable on return; with one, it becomes so (and gets its name) at
    ``batch.commit()``, which a caller writing many images calls once for all of them.
    """
    atomic = AtomicFile(Path(folder) / f"{safe_stem(stem)}.jpg")  # a temp name of the writer's pattern
    try:
        with atomic.tmp.open("wb") as handle:
            image.save(handle, format="JPEG", quality=quality)
            handle.flush()
            written = os.fstat(handle.fileno())  # a rename keeps size and mtime
        sha256 = hashlib.sha256(atomic.tmp.read_bytes()).hexdigest()
        target = atomic.path.with_name(digest_name(stem, sha256, ".jpg"))
        if target.exists():
            atomic.discard()
            return str(target)
        remember_sha256(target, written.st_size, written.st_mtime_ns, sha256)  # hashed once: the next step's stamp
        if batch is not None:
            batch.add(atomic.tmp, target)
        else:
            atomic.path = target
            atomic.commit()
    except BaseException:
        atomic.discard()
        raise
    return str(target)
