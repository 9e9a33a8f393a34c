"""Turn a model name or folder into a local folder, or fail with one clear message.

Order: a local folder as given; ``<local_dir>/<hub id>``; the Hugging Face cache (no network);
then, unless offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``), a download. Every failure
is a ``ModelNotAvailableError`` that lists what was tried and how to fix it.

Without an explicit cache folder the hub's own resolution applies (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), so a model downloaded the usual way is found.
A download fetches only ``MODEL_FILE_PATTERNS`` (weights, configs, tokenizer and processor files)
at the requested revision.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from dataflow_mm.common.errors import ModelNotAvailableError

CONFIG_FILE = "config.json"
# What decides a model's answers besides its weights: architecture, generation defaults, image
# preprocessing and chat template. Hashed (those present) into the provenance of every model step.
CONFIG_HASH_FILES = (
    CONFIG_FILE,
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "tokenizer_config.json",
)
# What a model needs to load: safetensors weights, configs (incl. sub-module folders), tokenizer
# and processor files, chat templates. Not: *.bin/*.pt duplicates, ONNX/GGUF exports, images, code.
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """True when the environment forbids network access to the hub (read at call time)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The hub cache folder: ``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or huggingface_hub's default."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def _looks_like_path(name: str) -> bool:
    """True for names that can only be folders (absolute, ``~``, ``./``, or not a valid hub id)."""
    return name.startswith(("/", "~", ".")) or "\\" in name or not _HUB_ID.match(name)


def _local_candidates(name: str, local_dir: str | os.PathLike | None) -> list[Path]:
    if not local_dir:
        return []
    base = Path(local_dir).expanduser()
    return list(dict.fromkeys([base / name.replace("/", "__"), base / name]))


def _has_config(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file()


def _fix_hint(name: str, revision: str | None = None) -> str:
    at = f" --revision {revision}" if revision else ""
    return (
        f"Fix: on a machine with network run `hf download {name}{at} --local-dir <folder>` "
        "(or copy the model folder here) and pass that folder with --model_path <folder>."
    )


def resolve_model_path(
    name_or_path: str, cache_dir: str | None = None, local_dir: str | None = None, revision: str | None = None
) -> Path:
    """A local folder holding ``config.json`` for ``name_or_path`` (folder or hub id).

    ``cache_dir`` None means the hub's own cache (``HF_HUB_CACHE`` / ``HF_HOME`` honoured);
    ``revision`` (branch, tag or commit) picks the cached snapshot and the download.
    Raises ``ModelNotAvailableError`` when the model is neither local, nor cached, nor
    downloadable. Never touches the network when offline.
    """
    name = str(name_or_path).strip()
    given = Path(name).expanduser()
    if given.is_dir():
        if _has_config(given):
            return given.resolve()
        raise ModelNotAvailableError(
            f"Model folder {given} exists but has no {CONFIG_FILE}: it is not a saved transformers model. "
            + _fix_hint(name)
        )
    if _looks_like_path(name):
        raise ModelNotAvailableError(
            f"Model folder {given} does not exist (and '{name}' is not a hub id). "
            "Pass an existing model folder with --model_path <folder>."
        )
    tried: list[str] = [f"no local folder named {given}"]

    for candidate in _local_candidates(name, local_dir):
        if _has_config(candidate):
            return candidate.resolve()
        tried.append(f"{candidate}: {'no ' + CONFIG_FILE if candidate.is_dir() else 'missing'}")

    cache = hf_cache_dir(cache_dir)
    found, reason = _from_cache(name, cache, revision)
    if found is not None:
        return found
    tried.append(f"Hugging Face cache at {cache}: {reason}")

    if is_offline():
        tried.append("download: skipped, offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)")
    else:
        found, reason = _download(name, cache, local_dir, revision)
        if found is not None:
            return found
        tried.append(f"download failed: {reason}")
    raise ModelNotAvailableError(
        f"Model '{name}' is not available. Tried: " + "; ".join(tried) + ". " + _fix_hint(name, revision)
    )


def _from_cache(repo_id: str, cache: Path, revision: str | None = None) -> tuple[Path | None, str]:
    """The cached snapshot of ``repo_id`` at ``revision`` (no network), or None and why not."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, cache_dir=str(cache), revision=revision, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        return None, f"not cached ({type(exc).__name__})"
    if not _has_config(folder):
        return None, f"snapshot {folder} has no {CONFIG_FILE} (incomplete download?)"
    return folder, ""


def _download(repo_id: str, cache: Path, local_dir: str | None, revision: str | None = None) -> tuple[Path | None, str]:
    """Download ``repo_id``'s model files into ``<local_dir>/<id with __>`` or the cache; None and why on failure."""
    from huggingface_hub import snapshot_download

    target = Path(local_dir).expanduser() / repo_id.replace("/", "__") if local_dir else None
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                cache_dir=str(cache),
                local_dir=str(target) if target else None,
                revision=revision,
                allow_patterns=list(MODEL_FILE_PATTERNS),
            )
        )
    except Exception as exc:
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    if not _has_config(folder):
        return None, f"{folder} has no {CONFIG_FILE} (not a transformers model repo?)"
    return folder, ""


def config_sha256(folder: str | os.PathLike) -> str | None:
    """sha256 over a model folder's config files (``CONFIG_HASH_FILES`` present), or None without ``config.json``.

    Each file enters as its name and its bytes, so the hash changes when any of them is edited,
    added or removed.
    """
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        return None
    digest = hashlib.sha256()
    for name in CONFIG_HASH_FILES:
        path = folder / name
        if path.is_file():
            data = path.read_bytes()
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()
