"""Tiny random-weight models of the real architectures, built offline in seconds.

Tests and smoke runs need models that exercise the real loading, chat-template, batching and
decoding code, but nothing can be downloaded. These builders make Qwen2.5-VL, LLaVA-NeXT,
BLIP image-text matching, CLIP and OWLv2 (open-vocabulary detection) folders (~1 MB each) with ``save_pretrained``: real
configs shrunk to hidden size 64 and 2 layers, tokenizers (the architectures' own
``tokenizers``-backed classes) with merges learned from a few dozen sentences, processors built
from their classes, and real-looking chat templates.
Weights are random (fixed seeds, so every build is identical): their text means nothing.

The Qwen2.5-VL and LLaVA-NeXT folders also load in vLLM as built (its CPU build included):
text head size 32 (the smallest vLLM's CPU attention supports), the processor files real
Qwen2.5-VL checkpoints ship (``preprocessor_config.json``, plus a video-processor config), and
LLaVA-NeXT weights under the real llava-hf key layout (``vision_tower.vision_model.*``).

Each folder holds a marker file (``dataflow_mm_tiny_model.json``) so a serving backend can
tell it is a smoke-test model (``is_tiny_model``).

This is product code: ``--allow_tiny_fallback`` uses it when a real model is unavailable; tests use
it directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from dataflow_mm.models.tiny_builders import BUILDER_VERSION, BUILDERS, MARKER_FILE

ENV_TINY_DIR = "DATAFLOW_MM_TINY_DIR"
DEFAULT_TINY_DIR = Path("~/.cache/dataflow_mm/tiny_models")
KINDS = tuple(BUILDERS)


# ---------------------------------------------------------------- cache


def is_tiny_model(path: str | Path | None) -> bool:
    """True when ``path`` is a folder built here (it holds the random-weights marker file)."""
    if path is None:
        return False
    try:
        marker = json.loads((Path(path).expanduser() / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("random_weights") is True


def tiny_models_root(root: str | Path | None = None) -> Path:
    """Where tiny models live: ``root``, else ``$DATAFLOW_MM_TINY_DIR``, else ``~/.cache/dataflow_mm/tiny_models``."""
    chosen = root or os.environ.get(ENV_TINY_DIR) or DEFAULT_TINY_DIR
    return Path(chosen).expanduser()


def tiny_model_path(kind: str, root: str | Path | None = None) -> Path:
    """The folder of the tiny ``kind`` model, built on first use and reused afterwards.

    The build goes to a temporary sibling folder that is then renamed into place, so a reader
    never sees a half-written folder and concurrent builders cannot corrupt each other (the
    first rename wins; the others discard their copy).
    """
    if kind not in BUILDERS:
        raise ValueError(f"Unknown tiny model kind {kind!r}; expected one of {', '.join(KINDS)}")
    base = tiny_models_root(root)
    target = base / f"{kind}-{BUILDER_VERSION}"
    if is_tiny_model(target):
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=base))
    try:
        BUILDERS[kind](staging)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    """Atomically rename ``staging`` to ``target`` unless another builder finished first."""
    if target.exists() and not is_tiny_model(target):
        # A stale or foreign folder under our versioned name: move it aside, then drop it.
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        with contextlib.suppress(OSError):  # someone else moved it already
            os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        if not is_tiny_model(target):  # not "lost the race to a finished build": a real error
            raise
