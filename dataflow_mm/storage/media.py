"""Where the media files a table refers to live."""

from __future__ import annotations

import contextlib
from pathlib import Path

from dataflow_mm.errors import MissingFieldError


def resolve_media_path(value: object, media_root: Path | None = None) -> Path:
    """The file a table cell points to.

    Absolute paths are used as they are. Relative paths are tried against the current
    directory first (as the seed's ``./data/...`` paths expect), then against ``media_root``
    (the folder of the input table), so a table moved together with its images still works.
    A missing file is reported later by the image loader, with the path as given.
    """
    if value is None or (isinstance(value, float) and value != value) or value == "":
        raise MissingFieldError("the image field is empty")
    if not isinstance(value, (str, Path)):
        raise MissingFieldError(f"the image field must be a path string, not {type(value).__name__}: {value!r}")
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
