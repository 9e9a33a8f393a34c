"""The vLLM engine settings that decide whether a model fits a GPU, each declared once.

* **Context length.** A model's config may allow far more positions than this job needs
  (Qwen2.5-VL: 128k), and vLLM reserves KV cache for the full length: a 7B model then does not
  start on a 24 GB card. The default is ``DEFAULT_MAX_MODEL_LEN`` (capped at the model's own
  limit); ``AUTO_FIT_MAX_MODEL_LEN`` (-1) asks vLLM to pick the longest length that fits.
* **Image size.** Qwen-VL processors turn a 12 MP photo into ~15,000 image tokens. The default
  ``mm_processor_kwargs`` per model family (``config.json``'s ``model_type``) cap it;
  ``max_pixels`` overrides the cap. The token budget counts with the same kwargs.
* **A start that fails** says which flag to change (``engine_start_hint``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from dataflow_mm.models.processor_loading import read_json_object

DEFAULT_MAX_MODEL_LEN = 8192
AUTO_FIT_MAX_MODEL_LEN = -1  # vLLM's own value: the longest context the KV cache memory allows
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# The request window defaults to what the engine schedules at once: its ``max_num_seqs`` as vLLM
# resolved it (0.32, ``engine/arg_utils.py``: 1,024 on H100/H200-class GPUs, 256 on smaller ones and
# per CPU socket); this when an engine does not say.
FALLBACK_MAX_REQUESTS_IN_FLIGHT = 256
# ... within this share of the host memory available when the engine starts, counted in bytes of the
# prepared inputs (decoded images) of the requests in the engine.
DEFAULT_PREPARED_BYTES_SHARE = 0.25
# vLLM >= 0.10 (V1) enables it for generative models anyway; older V0 builds default to off.
# ``engine_kwargs={"enable_prefix_caching": False}`` turns it off.
DEFAULT_ENABLE_PREFIX_CACHING = True

# Qwen's own recommended cap (1280 visual tokens of 28x28 pixels): a 4000x3000 photo becomes
# ~1,230 image tokens instead of ~15,300.
QWEN_VL_MAX_PIXELS = 1280 * 28 * 28
# model_type -> processor kwargs applied by default. Families not listed keep their processor's
# own settings (LLaVA-NeXT's any-resolution tiling is already bounded by its grid pinpoints).
FAMILY_MM_PROCESSOR_KWARGS: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"max_pixels": QWEN_VL_MAX_PIXELS},
    "qwen2_5_vl": {"max_pixels": QWEN_VL_MAX_PIXELS},
}
MAX_PIXELS_FAMILIES = tuple(k for k, v in FAMILY_MM_PROCESSOR_KWARGS.items() if "max_pixels" in v)


def model_type(model_dir: Path) -> str | None:
    """``config.json``'s ``model_type`` (the architecture family), or None."""
    value = read_json_object(Path(model_dir) / "config.json").get("model_type")
    return value if isinstance(value, str) else None


def config_max_positions(model_dir: Path) -> int | None:
    """The context length the model's config declares (its text model's ``max_position_embeddings``)."""
    config = read_json_object(Path(model_dir) / "config.json")
    for source in (config.get("text_config") or {}, config):
        value = source.get("max_position_embeddings") if isinstance(source, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_max_model_len(model_dir: Path) -> int:
    """``DEFAULT_MAX_MODEL_LEN``, or the model's own limit when that is shorter."""
    declared = config_max_positions(model_dir)
    return min(DEFAULT_MAX_MODEL_LEN, declared) if declared else DEFAULT_MAX_MODEL_LEN


def _processor_max_pixels(model_dir: Path) -> int | None:
    config = read_json_object(Path(model_dir) / "preprocessor_config.json")
    for value in (config.get("max_pixels"), (config.get("size") or {}).get("longest_edge")):
        if isinstance(value, int) and value > 0:
            return value
    return None


# transformers 5.x warns on every processor call that passes max_pixels (vLLM passes the engine's
# mm_processor_kwargs on each request, and its own token counts read that key): one line per request.
PROCESSOR_KWARGS_WARNING = r"Passing `min_pixels` and `max_pixels` to a processor call is deprecated"


def quiet_processor_kwargs_warning() -> None:
    """Keep transformers' per-call deprecation warning for ``max_pixels`` out of the run log."""
    warnings.filterwarnings("ignore", message=PROCESSOR_KWARGS_WARNING, category=FutureWarning)


def mm_processor_kwargs(model_dir: Path, max_pixels: int | None = None) -> dict[str, Any]:
    """The processor kwargs the engine (and the token budget) use for this model.

    The family default only ever lowers the processor's own cap (a model shipped with a smaller
    ``max_pixels`` keeps it); an explicit ``max_pixels`` is used as given. Raises ``ValueError``
    when ``max_pixels`` is given for a family whose processor has no such setting.
    """
    family = model_type(model_dir)
    kwargs = dict(FAMILY_MM_PROCESSOR_KWARGS.get(family or "", {}))
    if max_pixels is not None:
        if family not in MAX_PIXELS_FAMILIES:
            raise ValueError(
                f"--max_pixels applies to the {', '.join(MAX_PIXELS_FAMILIES)} processors, not model_type {family!r}"
            )
        kwargs["max_pixels"] = int(max_pixels)
    elif "max_pixels" in kwargs:
        own = _processor_max_pixels(model_dir)
        if own is not None:
            kwargs["max_pixels"] = min(own, kwargs["max_pixels"])
    return kwargs


def engine_start_hint(
    exc: BaseException, max_model_len: int | None, gpu_memory_utilization: float, cpu: bool = False
) -> str:
    """What to change when ``vllm.LLM`` did not start (its engine core's log above names the root cause).

    ``cpu``: vLLM's CPU build, where ``--gpu_memory_utilization`` is the share of the machine's RAM."""
    text = str(exc).lower()
    hint = _memory_hint(text, max_model_len, gpu_memory_utilization, cpu)
    if "initialization failed" in text or "bootstrapping phase" in text:  # the engine process died, or cannot start
        hint += (
            "; if the log above says a new process was started 'before the current process has finished its "
            "bootstrapping phase', run the script's pipeline under `if __name__ == \"__main__\":` (vLLM starts its "
            "engine with spawn, which imports the script again)"
        )
    return hint


def _memory_hint(text: str, max_model_len: int | None, gpu_memory_utilization: float, cpu: bool) -> str:
    if cpu or "cpu memory utilization" in text:
        return (
            f"on vLLM's CPU build --gpu_memory_utilization is the share of the machine's RAM the engine reserves "
            f"(now {gpu_memory_utilization}): lower it below the share that is free (see `free -g`), or give the "
            "KV cache a size (VLLM_CPU_KVCACHE_SPACE=<GiB>); if the KV cache does not fit, lower --max_model_len "
            "or --max_pixels"
        )
    if "free memory" in text or "less than desired gpu memory utilization" in text:
        return (
            f"another process holds GPU memory: lower --gpu_memory_utilization (now {gpu_memory_utilization}) "
            "to the free share, or free the GPU"
        )
    length = "auto-fit" if max_model_len == AUTO_FIT_MAX_MODEL_LEN else max_model_len
    return (
        f"if the log above says the KV cache or memory does not fit: lower --max_model_len (now {length}; "
        f"{AUTO_FIT_MAX_MODEL_LEN} lets vLLM pick the longest that fits) or --max_pixels, or raise "
        f"--gpu_memory_utilization (now {gpu_memory_utilization}) when nothing else uses the GPU; "
        "more GPUs: --tensor_parallel_size"
    )
