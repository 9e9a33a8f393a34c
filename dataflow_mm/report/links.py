"""Links from the report's folder to the images its rows show (relative URLs; nothing fetched)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dataflow_mm.report.layout import is_image_path
from dataflow_mm.report.locate import StepLocation
from dataflow_mm.storage.manifest import StepManifest


def _link(value: str, roots: list[Path], report_dir: str) -> str | None:
    """A URL to the image relative to the report's folder (None when the file is not there)."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~user" of an unknown user
        path = Path(value)
    for candidate in [path] if path.is_absolute() else [root / path for root in roots]:
        try:
            found = candidate.is_file()
        except (OSError, ValueError):  # a name too long, a NUL byte
            found = False
        if found:
            target = os.path.abspath(candidate)
            try:
                return quote(os.path.relpath(target, report_dir).replace(os.sep, "/"))
            except ValueError:  # another drive (Windows): an absolute file URL
                return Path(target).as_uri()
    return None


def _run_folder(location: StepLocation, manifests: dict[int, StepManifest], summary: dict | None) -> Path | None:
    """The working folder of the run, when the run recorded its step files by relative paths.

    A manifest records ``cache/x/p_step2.jsonl``; the file is now ``/home/u/ws/cache/x/p_step2.jsonl``:
    the run worked in ``/home/u/ws``, so its other relative paths (images) are relative to that.
    """
    recorded = [str(m.stats.get("output_path") or "") for m in manifests.values() if m.stats]
    recorded.append(str((summary or {}).get("output_path") or ""))
    for path_text in recorded:
        if not path_text or os.path.isabs(path_text):
            continue
        parts = Path(os.path.normpath(path_text)).parts
        if ".." in parts:
            continue
        actual = Path(os.path.abspath(location.cache_dir / parts[-1])).parts
        if len(actual) > len(parts) and actual[-len(parts) :] == parts:
            return Path(*actual[: -len(parts)])
    return None


def media_roots(
    location: StepLocation, manifests: dict[int, StepManifest], summary: dict | None, target: Path
) -> list[Path]:
    """Folders against which relative image paths are tried, in order."""
    roots = [Path.cwd()]
    run_folder = _run_folder(location, manifests, summary)
    if run_folder is not None:
        roots.append(run_folder)
    first = manifests.get(min(manifests)) if manifests else None
    if first is not None:
        source = Path(first.input_path)
        if not source.is_absolute() and run_folder is not None:
            source = run_folder / source
        roots.append(source.resolve().parent)
    roots += [location.cache_dir.resolve(), target.resolve().parent]
    return list(dict.fromkeys(roots))


def image_links(
    columns: list[str], rows: list[list[Any]], config: dict[str, Any], roots: list[Path], report_dir: Path
) -> dict[str, str | None]:
    """Original path -> relative URL (None: not found) for every image the page may show.

    Columns in an image role link any path (whatever its extension); other columns only image paths.
    """
    roles = config["roles"]
    role_names = {roles[r] for r in ("image", "original", "image1", "image2") if r in roles}
    names = {*config["imageColumns"], *config["imageListColumns"], *role_names}
    indexes = [(columns.index(c), c in role_names) for c in columns if c in names]
    links: dict[str, str | None] = {}
    base = os.path.abspath(report_dir)
    for row in rows:
        for index, any_path in indexes:
            value = row[index]
            for item in value if isinstance(value, list) else [value]:
                if not isinstance(item, str) or item in links or not (is_image_path(item) or (any_path and item)):
                    continue
                links[item] = _link(item, roots, base)
    return links
