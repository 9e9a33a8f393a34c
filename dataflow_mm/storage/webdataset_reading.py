"""WebDataset tar shards as rows: one row per sample (the members that share a key), streamed member by member.

A sample ``00042.jpg`` + ``00042.json`` + ``00042.txt`` (img2dataset's layout) becomes the row
``{"__key__": "00042", "__url__": <shard>, <the JSON object's fields>, "txt": <text>,
"image": {"bytes": <jpg bytes>, "path": "00042.jpg"}}``. The key is the member's path up to the
first dot of its file name, as the ``webdataset`` library splits it. The first image member (by
extension: jpg, jpeg, png, webp...) is the ``image`` cell, kept as bytes (decoded only when an
operator loads it, stored once in the media cache when a step is written); further images get a
column named by their extension (``seg.png``). ``txt``/``text``/``caption`` members are text, ``cls``/``index``
integers; other members are skipped. A JSON field never replaces ``__key__``, ``__url__`` or ``image``.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from dataflow_mm.common.errors import StorageError
from dataflow_mm.storage.media import IMAGE_COLUMN

KEY_COLUMN = "__key__"
URL_COLUMN = "__url__"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TEXT_EXTENSIONS = ("txt", "text", "caption")
INT_EXTENSIONS = ("cls", "cls2", "index")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext


def split_member_name(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member name (``a/b/00042.seg.png`` -> ``a/b/00042``, ``seg.png``); None without one."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def sample_row(key: str, members: dict[str, bytes], url: str) -> dict[str, Any]:
    """The row of one sample (see the module docstring)."""
    row: dict[str, Any] = {}
    if "json" in members:
        try:
            value = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"WebDataset sample '{key}' in '{url}': its .json member is not JSON ({exc})") from None
        row.update(value if isinstance(value, dict) else {"json": value})
    row[KEY_COLUMN], row[URL_COLUMN] = key, url
    images = [ext for ext in members if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]  # jpg, seg.png
    for index, ext in enumerate(images):
        row[IMAGE_COLUMN if index == 0 else ext] = {"bytes": members[ext], "path": f"{key.rsplit('/', 1)[-1]}.{ext}"}
    for ext in TEXT_EXTENSIONS:
        if ext in members:
            row[ext] = members[ext].decode("utf-8", errors="replace")
    for ext in INT_EXTENSIONS:
        if ext in members:
            text = members[ext].decode("utf-8", errors="replace").strip()
            row[ext] = int(text) if text.lstrip("-").isdigit() else text
    return row


def iter_shard_rows(handle: IO[bytes], url: str) -> Iterator[dict[str, Any]]:
    """The rows of one tar shard, read as a stream (``r|*``: plain or compressed, never seeked)."""
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=handle, mode="r|*") as tar:
            for member in tar:
                parts = split_member_name(member.name) if member.isfile() else None
                if parts is None or parts[0].rsplit("/", 1)[-1].startswith("__"):
                    continue
                if parts[0] != key:
                    if key is not None and members:
                        yield sample_row(key, members, url)
                    key, members = parts[0], {}
                extracted = tar.extractfile(member)
                members[parts[1]] = extracted.read() if extracted is not None else b""
    except tarfile.TarError as exc:
        raise StorageError(f"cannot read WebDataset shard '{url}' (not a tar file or truncated): {exc}") from None
    if key is not None and members:
        yield sample_row(key, members, url)
