"""The tiny-model fallback policy: a real model folder, else (only when allowed) a tiny random one.

``--allow_tiny_fallback`` exists so a pipeline runs end to end on a machine without the real
models; the answers or scores it then produces are meaningless, and every fallback says so in
the log. Servings and scorers share this one policy.
"""

from __future__ import annotations

from pathlib import Path

from dataflow_mm.common.errors import ModelNotAvailableError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.models.resolver import resolve_model_path
from dataflow_mm.models.tiny import is_tiny_model, tiny_model_path

log = get_logger("models")


def resolve_or_tiny(
    name_or_path: str | Path,
    tiny_kind: str | None,
    allow_tiny_fallback: bool,
    *,
    cache_dir: str | None = None,
    local_dir: str | None = None,
    revision: str | None = None,
    meaningless: str = "its output is MEANINGLESS smoke-test output",
) -> Path:
    """The local folder of ``name_or_path``; the tiny ``tiny_kind`` model when unavailable and allowed.

    Raises ``ModelNotAvailableError`` when the model is unavailable and no fallback is allowed.
    ``meaningless`` finishes the warning (what the caller's output means with random weights).
    """
    try:
        return resolve_model_path(str(name_or_path), cache_dir=cache_dir, local_dir=local_dir, revision=revision)
    except ModelNotAvailableError as exc:
        if not (allow_tiny_fallback and tiny_kind):
            raise
        log.warning(f"{exc}")
        log.warning(f"Falling back to a locally built tiny random-weight {tiny_kind} model: {meaningless}.")
        return tiny_model_path(tiny_kind)


def is_smoke_test_folder(folder: str | Path | None) -> bool:
    """True when ``folder`` is a tiny random-weight model (never raises)."""
    try:
        return bool(is_tiny_model(folder))
    except Exception:
        return False
