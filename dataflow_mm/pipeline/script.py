"""What every pipeline script shares: serving flags, building the serving, and clean exits.

A user error (bad input path, unwritable cache, mismatched keys, model not available) prints
one clear line and exits with code 2: no traceback for problems the user can fix.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from typing import Any

from dataflow_mm.errors import UserError
from dataflow_mm.imaging.bbox import BOX_FORMATS
from dataflow_mm.runners import RUNNERS, LocalRunner, Runner
from dataflow_mm.serving.api_serving import DEFAULT_MAX_RESPONSE_BYTES
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.serving.factory import BACKENDS, create_serving
from dataflow_mm.serving.vllm_engine_args import (
    AUTO_FIT_MAX_MODEL_LEN,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_MAX_REQUESTS_IN_FLIGHT,
    QWEN_VL_MAX_PIXELS,
)
from dataflow_mm.storage.formats import SUPPORTED_TYPES

EXIT_USER_ERROR = 2
# A write that failed because of the disk, not the program: a run-level problem (one line, exit 2).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def add_serving_args(parser: argparse.ArgumentParser, default_model: str) -> None:
    """The flags that choose and tune the VLM backend (shared by every pipeline script)."""
    group = parser.add_argument_group("model serving")
    group.add_argument("--model_path", default=default_model, help="hub id or local folder of the VLM")
    parser.set_defaults(shipped_model_path=default_model)
    group.add_argument(
        "--hf_cache_dir",
        default=None,
        help="Hugging Face hub cache folder (default: the hub's own: $HF_HUB_CACHE, $HF_HOME/hub or "
        "~/.cache/huggingface/hub)",
    )
    group.add_argument("--hf_revision", default=None, help="model revision (branch, tag or commit) on the hub")
    group.add_argument("--download_dir", default="./ckpt/models", help="where a downloaded model is stored")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: vllm when importable and a GPU is present, else hf (transformers)",
    )
    group.add_argument("--temperature", type=float, default=0.7)
    group.add_argument("--top_p", type=float, default=0.9)
    group.add_argument("--max_tokens", type=int, default=512)
    group.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed every request (all backends). With vllm a per-request seed makes vLLM sample each request "
        "on its own, slower path; --engine_seed seeds the engine only and keeps the fast batched path",
    )
    group.add_argument(
        "--engine_seed",
        type=int,
        default=None,
        help="vllm backend: seed the engine (reproducible for the same inputs, settings and batch order) "
        "without vLLM's slower per-request seeded sampling",
    )
    group.add_argument("--batch_size", type=int, default=8, help="requests per generate call (hf backend)")
    group.add_argument(
        "--max_model_len",
        type=int,
        default=None,
        help="context length; requests that cannot fit are refused or downscaled first. Default: vllm "
        f"{DEFAULT_MAX_MODEL_LEN} (or the model's limit if shorter; {AUTO_FIT_MAX_MODEL_LEN}: vLLM picks the longest "
        "that fits the GPU), hf/api the model's",
    )
    group.add_argument(
        "--gpu_memory_utilization",
        type=float,
        default=None,
        help=f"vllm backend: share of the GPU memory the engine may take (default {DEFAULT_GPU_MEMORY_UTILIZATION})",
    )
    group.add_argument(
        "--max_pixels",
        type=int,
        default=None,
        help=f"vllm backend, Qwen-VL models: image size cap in pixels (default {QWEN_VL_MAX_PIXELS} = 1280*28*28, "
        "about 1,280 image tokens); the token budget counts with it",
    )
    group.add_argument(
        "--max_requests_in_flight",
        type=int,
        default=None,
        help=f"vllm backend: requests decoded and in the engine at once (default {DEFAULT_MAX_REQUESTS_IN_FLIGHT}); "
        "bounds host memory whatever --chunk_size is",
    )
    group.add_argument(
        "--allow_downscale",
        action="store_true",
        help="shrink a request's images until it fits the context instead of marking the row PromptTooLongError",
    )
    group.add_argument("--tensor_parallel_size", type=int, default=1, help="GPUs per engine (vllm backend)")
    group.add_argument(
        "--enforce_eager",
        choices=["auto", "yes", "no"],
        default="auto",
        help="vllm backend: skip graph capture/compilation (auto: yes without a GPU, where it only slows start)",
    )
    group.add_argument(
        "--no_tiny_fallback",
        action="store_true",
        help="fail instead of falling back to a tiny smoke-test model when the model is unavailable",
    )
    group.add_argument(
        "--smoke_test",
        action="store_true",
        help="allow the tiny smoke-test fallback also for a --model_path you gave (which otherwise must load)",
    )
    group.add_argument("--api_url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    group.add_argument("--model_name", default=None, help="model name sent to the API (default: --model_path)")
    group.add_argument(
        "--api_key_env",
        default=None,
        help="name of the environment variable holding the API key (default: DF_API_KEY, else OPENAI_API_KEY)",
    )
    group.add_argument("--max_workers", type=int, default=8, help="requests in flight (api backend)")
    group.add_argument(
        "--api_timeout", type=float, default=60.0, help="seconds for a whole request, reply included (api backend)"
    )
    group.add_argument("--api_max_retries", type=int, default=3, help="retries on 429/5xx/timeouts (api backend)")
    group.add_argument(
        "--api_max_response_mb",
        type=float,
        default=DEFAULT_MAX_RESPONSE_BYTES / 2**20,
        help="largest reply accepted, in MiB once decompressed (api backend); a larger one is a row error",
    )


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """The flags that choose where the pipeline runs: in this process (default) or on Ray."""
    group = parser.add_argument_group("runner")
    group.add_argument(
        "--runner", choices=RUNNERS, default="local", help="local: in this process; ray: Ray tasks and actors (pip extra 'ray')"
    )
    group.add_argument(
        "--no_streaming",
        action="store_true",
        help="run the steps one after another instead of streaming chunks from step to step (either runner)",
    )
    group.add_argument(
        "--ray_address",
        default=None,
        help="Ray cluster to join ('auto' after `ray start --head`); default: start a local one",
    )
    group.add_argument(
        "--ray_actors_per_model_operator", type=int, default=1, help="actors (model copies) per model operator"
    )
    group.add_argument(
        "--ray_num_gpus_per_actor",
        type=float,
        default=None,
        help="GPUs per model actor (default: --tensor_parallel_size for the vllm backend, never 0; else 0)",
    )
    group.add_argument(
        "--ray_cpu_threads_per_actor",
        type=int,
        default=None,
        help="CPU threads per model actor for image preprocessing (default 4)",
    )


def runner_from_args(args: argparse.Namespace) -> Runner:
    """The runner the flags describe (Ray is imported only when it is chosen)."""
    if args.runner != "ray":
        return LocalRunner(streaming=not args.no_streaming)
    from dataflow_mm.runners.ray_runner import RayRunner

    return RayRunner(
        address=args.ray_address,
        actors_per_model_operator=args.ray_actors_per_model_operator,
        num_gpus_per_actor=args.ray_num_gpus_per_actor,
        cpu_threads_per_actor=args.ray_cpu_threads_per_actor,
        streaming=not args.no_streaming,
    )


def add_storage_args(
    parser: argparse.ArgumentParser, first_entry_file: str, cache_path: str, file_name_prefix: str, chunk_size: int
) -> None:
    """The seed's storage flags (input table, cache folder, prefix, format) plus the chunk size."""
    parser.add_argument("--first_entry_file", default=first_entry_file)
    parser.add_argument("--cache_path", default=cache_path)
    parser.add_argument("--file_name_prefix", default=file_name_prefix)
    parser.add_argument("--cache_type", default="jsonl", choices=SUPPORTED_TYPES)
    parser.add_argument(
        "--chunk_size", type=int, default=chunk_size, help="rows per chunk (one batched model call each)"
    )
    parser.add_argument(
        "--wait_for_lock",
        action="store_true",
        help="when another run holds --cache_path, wait for it to end instead of stopping (exit 2)",
    )


def add_bbox_format_arg(parser: argparse.ArgumentParser, default: str) -> None:
    """``--bbox_format``: how the input table writes its boxes (one of the imaging module's formats)."""
    parser.add_argument("--bbox_format", default=default, choices=BOX_FORMATS)


def tiny_fallback_allowed(args: argparse.Namespace, flag: str = "model_path", shipped: str | None = None) -> bool:
    """The tiny random-weight fallback stands in only for a shipped default model or with ``--smoke_test``.

    A model the user named (``--model_path /models/Qwen2.5-VL-3B-Instuct``, ``--blip_model ./blip``) that
    cannot be loaded stops the run with the resolver's message: running the job on a random model instead
    would be a silent substitution. ``flag`` is the option naming the model; ``shipped`` its default
    (for ``--model_path``, the script's default model).
    """
    if args.no_tiny_fallback:
        return False
    default = shipped if flag != "model_path" else getattr(args, "shipped_model_path", None)
    return bool(args.smoke_test) or getattr(args, flag) == default


def serving_from_args(args: argparse.Namespace) -> VLMServing:
    """Build the serving the flags describe (lazy: no model is loaded here)."""
    return create_serving(
        args.backend,
        args.model_path,
        hf_cache_dir=args.hf_cache_dir,
        hf_revision=args.hf_revision,
        download_dir=args.download_dir,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        allow_tiny_fallback=tiny_fallback_allowed(args),
        batch_size=args.batch_size,
        max_model_len=args.max_model_len,
        allow_downscale=args.allow_downscale,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_pixels=args.max_pixels,
        engine_seed=args.engine_seed,
        max_requests_in_flight=args.max_requests_in_flight,
        enforce_eager={"auto": None, "yes": True, "no": False}[args.enforce_eager],
        api_url=args.api_url,
        model_name=args.model_name,
        api_key_env=args.api_key_env,
        max_workers=args.max_workers,
        api_timeout=args.api_timeout,
        api_max_retries=args.api_max_retries,
        api_max_response_bytes=int(args.api_max_response_mb * 2**20),
    )


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's ``main``; user errors (and a full or read-only disk) become one line on stderr
    and exit code 2. Step files appear atomically, so a step cut short this way does not look complete."""
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = f" ('{exc.filename}')" if exc.filename else ""
        print(f"error: could not write{where}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the completed steps", file=sys.stderr)
        sys.exit(130)
