"""Every setting of a VLM serving, declared once.

:class:`ServingSettings` holds what chooses and tunes a backend: the model, sampling, engine options
and the API client's options. The pipeline scripts' serving flags are generated from its fields
(``--<field>``: type, default, help, choices), and ``serving.factory.create_serving`` builds a serving
from it, so a setting has one name as a flag, as a field and where the factory reads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from dataflow_mm.serving.breaker import DEFAULT_MAX_CONSECUTIVE_FAILURES, DEFAULT_MAX_UNANSWERED_S
from dataflow_mm.serving.http_reply import DEFAULT_MAX_RESPONSE_BYTES
from dataflow_mm.serving.vllm_engine_args import (
    AUTO_FIT_MAX_MODEL_LEN,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_PREPARED_BYTES_SHARE,
    QWEN_VL_MAX_PIXELS,
)

BACKENDS = ("auto", "vllm", "hf", "api")
ENFORCE_EAGER = {"auto": None, "yes": True, "no": False}
RENDER_THREAD = {"yes": True, "no": False}


def setting(default: Any, help: str | None, choices: tuple[str, ...] | None = None) -> Any:
    """A settings field; ``help=None`` means no flag (the script decides the value another way)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class ServingSettings:
    """What chooses and tunes a VLM serving (see the module docstring)."""

    backend: str = setting(
        "auto", "auto: vllm when importable and a GPU is present, else hf (transformers)", choices=BACKENDS
    )
    model_path: str = setting("", "hub id or local folder of the VLM")
    hf_cache_dir: str | None = setting(
        None,
        "Hugging Face hub cache folder (default: the hub's own: $HF_HUB_CACHE, $HF_HOME/hub or "
        "~/.cache/huggingface/hub)",
    )
    hf_revision: str | None = setting(None, "model revision (branch, tag or commit) on the hub")
    download_dir: str | None = setting("./ckpt/models", "where a downloaded model is stored")
    temperature: float = setting(0.7, "sampling temperature (all backends)")
    top_p: float = setting(0.9, "nucleus sampling (all backends)")
    max_tokens: int = setting(512, "most tokens generated per request (all backends)")
    seed: int | None = setting(
        None,
        "seed every request (all backends). With vllm a per-request seed makes vLLM sample each request "
        "on its own, slower path; --engine_seed seeds the engine only and keeps the fast batched path",
    )
    engine_seed: int | None = setting(
        None,
        "vllm backend: seed the engine (reproducible for the same inputs, settings and batch order) "
        "without vLLM's slower per-request seeded sampling",
    )
    batch_size: int = setting(8, "requests per generate call (hf backend)")
    max_model_len: int | None = setting(
        None,
        "context length; requests that cannot fit are refused or downscaled first. Default: vllm "
        f"{DEFAULT_MAX_MODEL_LEN} (or the model's limit if shorter; {AUTO_FIT_MAX_MODEL_LEN}: vLLM picks the longest "
        "that fits the GPU), hf/api the model's",
    )
    gpu_memory_utilization: float | None = setting(
        None, f"vllm backend: share of the GPU memory the engine may take (default {DEFAULT_GPU_MEMORY_UTILIZATION})"
    )
    max_pixels: int | None = setting(
        None,
        f"vllm backend, Qwen-VL models: image size cap in pixels (default {QWEN_VL_MAX_PIXELS} = 1280*28*28, "
        "about 1,280 image tokens); the token budget counts with it",
    )
    max_requests_in_flight: int | None = setting(
        None,
        "vllm backend: requests decoded and in the engine at once (default: what the engine schedules at once, "
        f"its max_num_seqs, within {round(DEFAULT_PREPARED_BYTES_SHARE * 100)}%% of available host memory "
        "of decoded images); shared by the chunks in flight, so it bounds host memory whatever --chunk_size is",
    )
    allow_downscale: bool = setting(
        False, "shrink a request's images until it fits the context instead of marking the row PromptTooLongError"
    )
    tensor_parallel_size: int = setting(1, "GPUs per engine (vllm backend)")
    enforce_eager: str = setting(
        "auto",
        "vllm backend: skip graph capture/compilation (auto: yes without a GPU, where it only slows start)",
        choices=tuple(ENFORCE_EAGER),
    )
    render_thread: str = setting(
        "no",
        "vllm backend: vLLM's input processing (tokenizing, the image processor) on a thread of its own beside "
        "the one that steps the engine; measured slower on vLLM's CPU build, not yet measured on a GPU "
        "(benchmarks/gpu_smoke.py --model compares both)",
        choices=tuple(RENDER_THREAD),
    )
    api_url: str | None = setting(None, "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    model_name: str | None = setting(None, "model name sent to the API (default: --model_path)")
    api_key_env: str | None = setting(
        None, "name of the environment variable holding the API key (default: DF_API_KEY, else OPENAI_API_KEY)"
    )
    max_workers: int = setting(8, "requests in flight (api backend)")
    api_timeout: float = setting(60.0, "seconds for a whole request, reply included (api backend)")
    api_max_retries: int = setting(3, "retries on 429/5xx/timeouts (api backend)")
    api_max_response_mb: float = setting(
        DEFAULT_MAX_RESPONSE_BYTES / 2**20,
        "largest reply accepted, in MiB once decompressed (api backend); a larger one is a row error",
    )
    api_max_consecutive_failures: int = setting(
        DEFAULT_MAX_CONSECUTIVE_FAILURES,
        "api backend: stop the run (exit 3, the rows not answered stay pending; rerun to continue) after this "
        "many requests in a row got no answer after their retries (connection refused/reset, timeout, "
        f"408/429/5xx); default {DEFAULT_MAX_CONSECUTIVE_FAILURES}, 0: never",
    )
    api_max_unanswered_s: float = setting(
        DEFAULT_MAX_UNANSWERED_S,
        "api backend: stop the run (exit 3) when no request was answered for this many seconds while "
        f"requests were failing; default {DEFAULT_MAX_UNANSWERED_S:g}, 0: never",
    )
    allow_tiny_fallback: bool = setting(True, None)  # scripts: --no_tiny_fallback / --smoke_test decide it

    @classmethod
    def add_flags(cls, group: argparse._ActionsContainer, **defaults: Any) -> None:
        """One ``--<name>`` flag per field that has a help text; ``defaults`` override the fields' defaults."""
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            help_text = item.metadata.get("help")
            if help_text is None:
                continue
            default = defaults.get(item.name, item.default)
            if hints[item.name] is bool:
                group.add_argument(f"--{item.name}", action="store_true", default=default, help=help_text)
                continue
            kind = next(t for t in typing.get_args(hints[item.name]) or (hints[item.name],) if t is not type(None))
            group.add_argument(
                f"--{item.name}", type=kind, default=default, choices=item.metadata.get("choices"), help=help_text
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, **values: Any) -> ServingSettings:
        """The settings the parsed flags hold (``values`` for the fields without a flag)."""
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)}, **values)

    @property
    def api_max_response_bytes(self) -> int:
        return int(self.api_max_response_mb * 2**20)

    @property
    def eager(self) -> bool | None:
        """``enforce_eager`` as vLLM takes it (None: decide by whether a GPU is present)."""
        return ENFORCE_EAGER[self.enforce_eager]

    @property
    def render_on_thread(self) -> bool:
        """``render_thread`` as the vLLM serving takes it."""
        return RENDER_THREAD[self.render_thread]
