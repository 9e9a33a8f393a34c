"""Choose and build a serving backend from command-line style options.

One place decides the default backend (vLLM when it is importable and a GPU is present,
else transformers) and the offline fallback: when the configured model cannot be found
locally or downloaded, a locally built tiny random-weight model stands in, and the run's
summary says plainly that its answers are meaningless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataflow_mm.deps import is_importable
from dataflow_mm.errors import UserError
from dataflow_mm.logger import get_logger
from dataflow_mm.models.device import cuda_available
from dataflow_mm.models.fallback import resolve_or_tiny
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.serving.vllm_engine_args import AUTO_FIT_MAX_MODEL_LEN

log = get_logger("serving")
BACKENDS = ("auto", "vllm", "hf", "api")
FALLBACK_TINY_KIND = "qwen2_5_vl"


def default_backend() -> str:
    """vLLM when it can run (importable and a GPU present), else the transformers backend."""
    return "vllm" if is_importable("vllm") and cuda_available() else "hf"


def resolve_or_fallback(
    model_path: str,
    hf_cache_dir: str | None,
    download_dir: str | None,
    allow_tiny_fallback: bool,
    revision: str | None = None,
) -> Path:
    """The model folder to load, or a tiny smoke-test model when the real one is unavailable."""
    return resolve_or_tiny(
        model_path,
        FALLBACK_TINY_KIND,
        allow_tiny_fallback,
        cache_dir=hf_cache_dir,
        local_dir=download_dir,
        revision=revision,
        meaningless="its answers are MEANINGLESS smoke-test output, not captions",
    )


def create_serving(
    backend: str,
    model_path: str,
    *,
    hf_cache_dir: str | None = None,
    hf_revision: str | None = None,
    download_dir: str | None = None,
    temperature: float = 0.7,
    top_p: float = 0.9,
    max_tokens: int = 512,
    seed: int | None = None,
    allow_tiny_fallback: bool = True,
    batch_size: int = 8,
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    enforce_eager: bool | None = None,
    gpu_memory_utilization: float | None = None,
    max_pixels: int | None = None,
    engine_seed: int | None = None,
    max_requests_in_flight: int | None = None,
    allow_downscale: bool = False,
    api_url: str | None = None,
    model_name: str | None = None,
    api_key_env: str | None = None,
    max_workers: int = 8,
    api_timeout: float = 60.0,
    api_max_retries: int = 3,
    api_max_response_bytes: int | None = None,
    **extra: Any,
) -> VLMServing:
    """A serving for ``backend`` ('auto', 'vllm', 'hf' or 'api')."""
    if backend not in BACKENDS:
        raise UserError(f"Unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = default_backend()
        log.info(f"backend: {backend} (auto: {'vLLM and a GPU found' if backend == 'vllm' else 'no GPU or no vLLM'})")
    if backend == "api":
        from dataflow_mm.serving.api_serving import APIVLMServing_openai

        if not api_url:
            raise UserError("--backend api needs --api_url (e.g. http://localhost:8000/v1)")
        if api_max_response_bytes is not None:
            extra["max_response_bytes"] = api_max_response_bytes
        return APIVLMServing_openai(
            api_url=api_url,
            model_name=model_name or model_path,
            api_key_env=api_key_env,
            max_workers=max_workers,
            timeout=api_timeout,
            max_retries=api_max_retries,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            **extra,
        )
    folder = str(resolve_or_fallback(model_path, hf_cache_dir, download_dir, allow_tiny_fallback, hf_revision))
    if backend == "vllm":
        from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

        engine: dict[str, Any] = {
            name: value
            for name, value in (
                ("vllm_max_model_len", max_model_len),
                ("vllm_gpu_memory_utilization", gpu_memory_utilization),
                ("vllm_max_pixels", max_pixels),
                ("vllm_engine_seed", engine_seed),
                ("vllm_max_requests_in_flight", max_requests_in_flight),
            )
            if value is not None
        }
        return LocalModelVLMServing_vllm(
            hf_model_name_or_path=folder,
            hf_cache_dir=hf_cache_dir,
            hf_local_dir=download_dir,
            vllm_tensor_parallel_size=tensor_parallel_size,
            vllm_enforce_eager=not cuda_available() if enforce_eager is None else enforce_eager,
            vllm_temperature=temperature,
            vllm_top_p=top_p,
            vllm_max_tokens=max_tokens,
            vllm_seed=seed,
            allow_downscale=allow_downscale,
            **engine,
            **extra,
        )
    from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf

    return LocalModelVLMServing_hf(
        hf_model_name_or_path=folder,
        hf_cache_dir=hf_cache_dir,
        hf_local_dir=download_dir,
        batch_size=batch_size,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        max_model_len=None if max_model_len == AUTO_FIT_MAX_MODEL_LEN else max_model_len,  # -1: the model's own
        allow_downscale=allow_downscale,
        **extra,
    )
