"""Where an export writes, and what it may replace there: users export straight into folders they keep
(LLaMA-Factory's ``data/``, with every dataset they registered in its ``dataset_info.json``).

* ``--out`` must be a folder (created when missing); an existing file is a usage error.
* A data file that exists is never replaced unless ``overwrite``; the error names the file.
* ``dataset_info.json`` is merged: only this export's entry is added (or, with ``overwrite``,
  replaced when it differs); every other entry stays as it was, in its order.
* ``export_summary.json`` is this command's own file: replaced when it is one (a JSON object with a
  ``format``), otherwise protected like a data file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dataflow_mm.errors import UserError

DATASET_INFO_NAME = "dataset_info.json"
DEFAULT_DATASET_NAME = "dataflow_mm"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_out_dir(out_dir: Path) -> None:
    """A usage error when ``out_dir`` exists and is not a folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out '{out_dir}' is a file, not a folder: give a folder (it is created when missing)")


def check_dataset_name(name: str) -> str:
    """``name`` when it can be a dataset entry and a file name (letters, digits, '.', '_', '-')."""
    if not _NAME.match(name):
        raise UserError(
            f"--dataset_name {name!r} must start with a letter or digit and hold only letters, digits, '.', '_', '-'"
        )
    return name


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """A usage error naming the first of ``paths`` that exists (unless ``overwrite``) or is a folder."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            raise UserError(f"'{path}' is a folder: the export writes a file there; choose another --out")
        if not overwrite and (path.exists() or path.is_symlink()):
            raise UserError(f"'{path}' exists: pass --overwrite to replace it, or choose another --out")


def summary_is_replaceable(path: Path, overwrite: bool) -> None:
    """A usage error when ``path`` holds a file that is not an export summary (and not ``overwrite``)."""
    if overwrite or not path.exists():
        return
    try:
        ours = isinstance(loaded := json.loads(path.read_text(encoding="utf-8")), dict) and "format" in loaded
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise UserError(f"'{path}' exists and is not an export summary: pass --overwrite to replace it")


def merged_dataset_info(path: Path, name: str, entry: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The registry at ``path`` with ``entry`` under ``name``, every other entry untouched.

    A usage error when the file is not a JSON object, or already registers ``name`` differently
    (unless ``overwrite``): another dataset is never unregistered silently.
    """
    if not path.exists():
        return {name: entry}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"'{path}' cannot be read as JSON ({exc}): fix it, or choose another --out") from None
    if not isinstance(info, dict):
        raise UserError(f"'{path}' is not a JSON object of datasets: fix it, or choose another --out")
    if name in info and info[name] != entry and not overwrite:
        registered = info[name].get("file_name") if isinstance(info[name], dict) else None
        detail = f" (file {registered!r})" if registered else ""
        raise UserError(
            f"'{path}' already registers a dataset '{name}'{detail}: choose another --dataset_name, "
            "or pass --overwrite to replace that entry"
        )
    return {**info, name: entry}
