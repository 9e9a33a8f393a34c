"""GPU memory across the models of one pipeline on one GPU (Img-Diff: a vLLM engine beside BLIP and CLIP).

vLLM's engine takes ``gpu_memory_utilization`` of the card (default 0.9) and refuses to start when
less than that is free, so with scorers on the same card the run depends on which loads first (a
resumed run flips the order). The plan gives the engine a share that leaves room for the scorers
whatever the order: ``DEFAULT_GPU_MEMORY_UTILIZATION`` minus the scorers' reserve. Every model that
stays loaded beside the engine is counted (Img-Diff: BLIP, the similarity model and, with
``--proposer model``, OWLv2 and a second CLIP; the region pipeline's ``--verify_regions``: BLIP), each
as a :class:`ModelLoad` (model, batch, which tower runs). Its reserve is its weights (a local folder's
weight files, or the parameter count of the default models from their configs, fp32) plus the
activations of one batch through its transformer tower, from the tower's config (tokens, width,
heads): the residual stream, the MLP's intermediate, and attention: eager attention (BLIP in
transformers 5.x has no SDPA) holds the batch's ``heads x tokens^2`` scores and probabilities, SDPA
only q, k and v. Plus one CUDA context. **Computed, not measured**; the plan is logged model by model.
A ``--gpu_memory_utilization`` given by the user is never changed.

The card's size is read without opening a CUDA context in this process (``nvidia-smi``, else NVML,
else ``torch.cuda.mem_get_info`` in a child process): the engine and the scorers open their own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dataflow_mm.common.errors import UserError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.serving.vllm_engine_args import DEFAULT_GPU_MEMORY_UTILIZATION

log = get_logger("pipeline.gpu_plan")

GIB = 2**30
CUDA_CONTEXT_BYTES = GIB // 2  # the pipeline process's own CUDA context (the engine core has its own)
UNKNOWN_SCORER_BYTES = 2 * GIB  # a scorer whose size cannot be read: a generous guess
UNKNOWN_ACTIVATION_BYTES = 2 * GIB  # a model whose tower config cannot be read
DEFAULT_SCORING_BATCH = 32
FLOAT_BYTES = 4  # scorers run in fp32
# Parameters of the default scorers (from their configs), held in fp32.
DEFAULT_SCORER_PARAMETERS = {
    "Salesforce/blip-itm-base-coco": 224_000_000,
    "openai/clip-vit-base-patch32": 151_000_000,
    "google/owlv2-base-patch16-ensemble": 155_000_000,
}
EAGER_MODEL_TYPES = ("blip",)  # transformers 5.x runs these with eager attention (no SDPA)


@dataclass(frozen=True)
class Tower:
    """The transformer a model's batch goes through: sequence length, width, heads, MLP width, attention."""

    tokens: int
    hidden: int
    heads: int
    intermediate: int
    eager: bool

    def activation_bytes(self, batch: int) -> int:
        """Peak activations of one batch (fp32, inference): residual stream and norms (4 x tokens x hidden),
        the MLP's intermediate before and after its activation (2 x tokens x intermediate), attention's
        scores and probabilities (eager: 2 x heads x tokens^2) or q, k, v (SDPA: 3 x tokens x hidden)."""
        per_item = 4 * self.tokens * self.hidden + 2 * self.tokens * self.intermediate
        per_item += 2 * self.heads * self.tokens**2 if self.eager else 3 * self.tokens * self.hidden
        return batch * per_item * FLOAT_BYTES


# The default models' towers, from their config.json (image_size / patch_size)^2 + 1 tokens.
DEFAULT_TOWERS: dict[tuple[str, str], Tower] = {
    ("Salesforce/blip-itm-base-coco", "vision"): Tower(577, 768, 12, 3072, eager=True),  # 384 px, patch 16
    ("openai/clip-vit-base-patch32", "vision"): Tower(50, 768, 12, 3072, eager=False),  # 224 px, patch 32
    ("openai/clip-vit-base-patch32", "text"): Tower(77, 512, 8, 2048, eager=False),
    ("google/owlv2-base-patch16-ensemble", "vision"): Tower(3601, 768, 12, 3072, eager=False),  # 960 px, patch 16
}


@dataclass(frozen=True)
class ModelLoad:
    """A model that stays on the GPU beside the engine: its name, the batch it runs, which tower the batch
    goes through (``vision``: images; ``text``: a text-similarity model) and its role in the pipeline."""

    model: str | Path
    batch_size: int = DEFAULT_SCORING_BATCH
    tower: str = "vision"
    role: str = ""

    def weight_bytes(self) -> int:
        return scorer_bytes(self.model)

    def activation_bytes(self) -> int:
        tower = tower_of(self.model, self.tower)
        return tower.activation_bytes(self.batch_size) if tower else UNKNOWN_ACTIVATION_BYTES

    def reserve_bytes(self) -> int:
        return self.weight_bytes() + self.activation_bytes()


def tower_of(model: str | Path, kind: str) -> Tower | None:
    """The tower of a local model folder (its config.json) or of a default model; None when unknown."""
    config_path = Path(str(model)).expanduser() / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return _tower_from_config(config, kind)
    return DEFAULT_TOWERS.get((str(model), kind))


def _tower_from_config(config: dict, kind: str) -> Tower | None:
    part = config.get(f"{kind}_config") or config  # a single-tower model (a sentence encoder) has no sub-config
    if not isinstance(part, dict):
        return None
    try:
        hidden = int(part.get("hidden_size", 768))
        heads = int(part.get("num_attention_heads", 12))
        intermediate = int(part.get("intermediate_size", 4 * hidden))
        if kind == "vision":
            tokens = (int(part.get("image_size", 224)) // int(part.get("patch_size", 16))) ** 2 + 1
        else:
            tokens = int(part.get("max_position_embeddings", 77))
    except (TypeError, ValueError):
        return None
    return Tower(tokens, hidden, heads, intermediate, eager=config.get("model_type") in EAGER_MODEL_TYPES)


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


def as_load(model: str | Path | ModelLoad) -> ModelLoad:
    """A bare model name is a vision model scoring batches of ``DEFAULT_SCORING_BATCH``."""
    return model if isinstance(model, ModelLoad) else ModelLoad(model)


def scorers_reserve_bytes(models: Sequence[str | Path | ModelLoad]) -> int:
    """GPU memory to keep free for ``models`` (weights + one batch's activations each, one CUDA context)."""
    if not models:
        return 0
    return CUDA_CONTEXT_BYTES + sum(as_load(m).reserve_bytes() for m in models)


def plan_lines(models: Sequence[str | Path | ModelLoad]) -> list[str]:
    """The reserve, model by model, as the run log shows it."""
    lines = []
    for load in map(as_load, models):
        role = f"{load.role}: " if load.role else ""
        lines.append(
            f"{role}{load.model} (batch {load.batch_size}, {load.tower}): weights {load.weight_bytes() / GIB:.2f} GiB"
            f" + activations {load.activation_bytes() / GIB:.2f} GiB"
        )
    if models:
        lines.append(f"this process's CUDA context: {CUDA_CONTEXT_BYTES / GIB:.2f} GiB")
    return lines


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
    serving: VLMServing, scorer_models: Sequence[str | Path | ModelLoad], total_bytes: int | None
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
        f"{reserved / GIB:.1f} GiB stay free for the models beside it:"
    )
    for line in plan_lines(scorer_models):
        log.info(f"  GPU plan: {line}")
    return share


def cuda_total_bytes(device: str) -> int | None:
    """The total memory of the CUDA device the scorers will use, or None when they run elsewhere."""
    from dataflow_mm.models.device import resolve_device

    resolved = resolve_device(device)
    if not resolved.startswith("cuda"):
        return None
    index = int(resolved.partition(":")[2] or 0)
    return nvidia_smi_total_bytes(index) or nvml_total_bytes(index) or child_process_total_bytes(index)


def physical_gpu(index: int) -> str:
    """The ``nvidia-smi``/NVML id of CUDA device ``index`` (``CUDA_VISIBLE_DEVICES`` renumbers them)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)


def nvidia_smi_total_bytes(index: int) -> int | None:
    """The card's memory as ``nvidia-smi`` reports it (MiB), or None without it."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return None
    query = [command, "--query-gpu=memory.total", "--format=csv,noheader,nounits", f"--id={physical_gpu(index)}"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
        return int(float(done.stdout.strip().splitlines()[0])) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def nvml_total_bytes(index: int) -> int | None:
    """The card's memory through NVML (``nvidia-ml-py``), or None without it."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            gpu = physical_gpu(index)
            handle = (
                pynvml.nvmlDeviceGetHandleByIndex(int(gpu)) if gpu.isdigit() else pynvml.nvmlDeviceGetHandleByUUID(gpu)
            )
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def child_process_total_bytes(index: int) -> int | None:
    """``torch.cuda.mem_get_info`` in a child process (its CUDA context ends with it), or None."""
    code = f"import torch; print(torch.cuda.mem_get_info({index})[1])"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        return int(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
