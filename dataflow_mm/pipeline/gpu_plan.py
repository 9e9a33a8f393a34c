"""GPU memory across the models of one pipeline on one GPU (Img-Diff: a vLLM engine beside BLIP and CLIP).

vLLM's engine takes ``gpu_memory_utilization`` of the card (default 0.9) and refuses to start when
less than that is free, so with scorers on the same card the run depends on which loads first (a
resumed run flips the order). The plan gives the engine a share that leaves room for the scorers
whatever the order: ``DEFAULT_GPU_MEMORY_UTILIZATION`` minus the scorers' reserve. A reserve is
their weights (a local folder's weight files, or the parameter count of the default models from
their configs, fp32) plus activations per scorer and one CUDA context: **computed, not measured**.
A ``--gpu_memory_utilization`` given by the user is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dataflow_mm.common.errors import UserError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.serving.vllm_engine_args import DEFAULT_GPU_MEMORY_UTILIZATION

log = get_logger("pipeline.gpu_plan")

GIB = 2**30
CUDA_CONTEXT_BYTES = GIB // 2  # the pipeline process's own CUDA context (the engine core has its own)
ACTIVATION_BYTES_PER_SCORER = GIB // 2  # a scoring batch of 32 crops through a base-size ViT, with margin
UNKNOWN_SCORER_BYTES = 2 * GIB  # a scorer whose size cannot be read: a generous guess
# Parameters of the default scorers (from their configs), held in fp32.
DEFAULT_SCORER_PARAMETERS = {
    "Salesforce/blip-itm-base-coco": 224_000_000,
    "openai/clip-vit-base-patch32": 151_000_000,
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
MIN_ENGINE_SHARE = 0.3


def scorer_bytes(model: str | Path) -> int:
    """A scorer's weights on the GPU: its folder's weight files, the default models' computed size, or a guess."""
    folder = Path(str(model)).expanduser()
    if folder.is_dir():
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if size:
            return size
    parameters = DEFAULT_SCORER_PARAMETERS.get(str(model))
    return parameters * 4 if parameters else UNKNOWN_SCORER_BYTES


def scorers_reserve_bytes(models: Sequence[str | Path]) -> int:
    """GPU memory to keep free for ``models`` (weights + activations each, one CUDA context)."""
    if not models:
        return 0
    return CUDA_CONTEXT_BYTES + sum(scorer_bytes(m) + ACTIVATION_BYTES_PER_SCORER for m in models)


def engine_share(total_bytes: int, reserved_bytes: int, ceiling: float = DEFAULT_GPU_MEMORY_UTILIZATION) -> float:
    """The engine's ``gpu_memory_utilization``: ``ceiling`` less the reserve's share, rounded down to 0.01."""
    share = math.floor((ceiling - reserved_bytes / total_bytes) * 100) / 100
    if share < MIN_ENGINE_SHARE:
        raise UserError(
            f"a {total_bytes / GIB:.0f} GiB GPU leaves the vLLM engine only {share:.2f} of its memory beside the "
            f"scoring models ({reserved_bytes / GIB:.1f} GiB): run the scorers on the CPU (--device cpu) or use "
            "a larger GPU"
        )
    return share


def share_gpu_with_scorers(
    serving: VLMServing, scorer_models: Sequence[str | Path], total_bytes: int | None
) -> float | None:
    """Give a vLLM ``serving`` the share of a ``total_bytes`` GPU that leaves room for ``scorer_models``.

    Does nothing (None) without a GPU, for other backends, or when the user set the share.
    """
    if total_bytes is None or getattr(serving, "backend_name", None) != "vllm":
        return None
    if getattr(serving, "gpu_memory_utilization_given", True):
        return None
    reserved = scorers_reserve_bytes(scorer_models)
    share = engine_share(total_bytes, reserved)
    serving.gpu_memory_utilization = share  # type: ignore[attr-defined]
    log.info(
        f"one GPU of {total_bytes / GIB:.1f} GiB: the vLLM engine gets {share:.2f} of it, "
        f"{reserved / GIB:.1f} GiB stay free for the scoring models"
    )
    return share


def cuda_total_bytes(device: str) -> int | None:
    """The total memory of the CUDA device the scorers will use, or None when they run elsewhere."""
    from dataflow_mm.models.device import resolve_device

    resolved = resolve_device(device)
    if not resolved.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.get_device_properties(torch.device(resolved)).total_memory)
