"""Choose and build a serving backend from its settings (``serving.settings.ServingSettings``).

One place decides the default backend (vLLM when it is importable and a GPU is present,
else transformers) and the offline fallback: when the configured model cannot be found
locally or downloaded, a locally built tiny random-weight model stands in, and the run's
summary says plainly that its answers are meaningless.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dataflow_mm.common.deps import is_importable
from dataflow_mm.common.errors import UserError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.models.device import cuda_available
from dataflow_mm.models.fallback import resolve_or_tiny
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.serving.settings import BACKENDS, ServingSettings
from dataflow_mm.serving.vllm_engine_args import AUTO_FIT_MAX_MODEL_LEN

log = get_logger("serving")
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


def create_serving(settings: ServingSettings | str, model_path: str | None = None, **options: Any) -> VLMServing:
    """A serving built from ``settings`` (lazy: no model loads here).

    Shorthand: ``create_serving("hf", "Qwen/Qwen2.5-VL-3B-Instruct", max_tokens=64)``, a backend, a model
    and settings fields by name. Options that are not settings fields go to the serving's constructor
    as they are (e.g. ``device``).
    """
    if isinstance(settings, str):
        names = {item.name for item in dataclasses.fields(ServingSettings)}
        given = {name: options.pop(name) for name in list(options) if name in names}
        settings = ServingSettings(backend=settings, model_path=model_path or "", **given)
    extra = options
    s = settings
    backend = s.backend
    if backend not in BACKENDS:
        raise UserError(f"Unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = default_backend()
        log.info(f"backend: {backend} (auto: {'vLLM and a GPU found' if backend == 'vllm' else 'no GPU or no vLLM'})")
    # The same four sampling settings for every backend (vLLM's constructor names them with a vllm_ prefix).
    sampling = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed}
    if backend == "api":
        from dataflow_mm.serving.api_serving import APIVLMServing_openai

        if not s.api_url:
            raise UserError("--backend api needs --api_url (e.g. http://localhost:8000/v1)")
        extra.setdefault("max_response_bytes", s.api_max_response_bytes)
        return APIVLMServing_openai(
            api_url=s.api_url,
            model_name=s.model_name or s.model_path,
            api_key_env=s.api_key_env,
            max_workers=s.max_workers,
            timeout=s.api_timeout,
            max_retries=s.api_max_retries,
            max_consecutive_failures=s.api_max_consecutive_failures,
            max_unanswered_s=s.api_max_unanswered_s,
            **sampling,
            **extra,
        )
    folder = str(
        resolve_or_fallback(s.model_path, s.hf_cache_dir, s.download_dir, s.allow_tiny_fallback, s.hf_revision)
    )
    if backend == "vllm":
        from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

        engine: dict[str, Any] = {
            name: value
            for name, value in (
                ("vllm_max_model_len", s.max_model_len),
                ("vllm_gpu_memory_utilization", s.gpu_memory_utilization),
                ("vllm_max_pixels", s.max_pixels),
                ("vllm_engine_seed", s.engine_seed),
                ("vllm_max_requests_in_flight", s.max_requests_in_flight),
            )
            if value is not None
        }
        return LocalModelVLMServing_vllm(
            hf_model_name_or_path=folder,
            hf_cache_dir=s.hf_cache_dir,
            hf_local_dir=s.download_dir,
            vllm_tensor_parallel_size=s.tensor_parallel_size,
            vllm_enforce_eager=not cuda_available() if s.eager is None else s.eager,
            **{f"vllm_{name}": value for name, value in sampling.items()},
            vllm_render_thread=s.render_on_thread,
            allow_downscale=s.allow_downscale,
            **engine,
            **extra,
        )
    from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf

    return LocalModelVLMServing_hf(
        hf_model_name_or_path=folder,
        hf_cache_dir=s.hf_cache_dir,
        hf_local_dir=s.download_dir,
        batch_size=s.batch_size,
        **sampling,
        max_model_len=None if s.max_model_len == AUTO_FIT_MAX_MODEL_LEN else s.max_model_len,  # -1: the model's own
        allow_downscale=s.allow_downscale,
        **extra,
    )
