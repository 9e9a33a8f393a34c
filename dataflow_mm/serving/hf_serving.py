"""The transformers backend: any image-text-to-text model, on CPU or GPU, batched.

Same interface as the vLLM backend. Each request is rendered with the model's own chat
template, its images are decoded in memory, and ``batch_size`` requests share one
left-padded ``model.generate`` call. Nothing is loaded until the first ``chat``.

Before generating, every request is counted with the processor (images included) against
``max_model_len`` (default: the model config's max positions): one that cannot fit with
``max_tokens`` new tokens is downscaled (``allow_downscale=True``) or answered with a
``PromptTooLongError`` without reaching ``generate`` (see ``serving.token_budget``).

A batch the device has no memory for (``torch.OutOfMemoryError``) is generated again one request at a
time; a request that does not fit even alone is left *pending* (``ServingUnavailableError``: the memory
may be free on a rerun) instead of ending the run.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dataflow_mm.common.deps import is_importable, require
from dataflow_mm.common.errors import (
    ConfigError,
    RowError,
    ServingError,
    ServingUnavailableError,
    UserError,
    row_error_text,
)
from dataflow_mm.common.logger import get_logger
from dataflow_mm.models.device import resolve_device
from dataflow_mm.models.processor_loading import load_processor
from dataflow_mm.serving import structured
from dataflow_mm.serving.base import FINISH_LENGTH, Completion, Conversation, SamplingParams, VLMServing
from dataflow_mm.serving.local_model import LocalModel
from dataflow_mm.serving.messages import split_images, to_pil
from dataflow_mm.serving.prefetch import prefetched
from dataflow_mm.serving.token_budget import PromptTokenCounter, fit_to_budget, max_len_from_config
from dataflow_mm.serving.token_budget import limit_side as _shrink

logger = get_logger("serving.hf")

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}

# One prepared request: (index in the call, prompt text, its images in order).
_Prepared = tuple[int, str, list[Image.Image]]


@dataclass
class _Batch:
    """Up to ``batch_size`` requests ready for ``generate``: their indexes in the call and processor inputs."""

    positions: list[int]
    inputs: Any

    def __len__(self) -> int:
        return len(self.positions)


def _resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype: ``"auto"`` is bfloat16 on CUDA and float32 elsewhere."""
    torch = require("torch", "hf")
    name = dtype.lower()
    if name == "auto":
        name = "bfloat16" if device.startswith("cuda") else "float32"
    if name not in _DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(sorted(set(_DTYPES.values())))}, not {dtype!r}")
    return getattr(torch, _DTYPES[name])


def _trim(ids: list[int], eos_ids: set[int], pad_id: int | None) -> list[int]:
    """Generated ids up to and including the first end-of-sequence token, trailing pads dropped."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[: position + 1]
    while ids and pad_id is not None and ids[-1] == pad_id:
        ids = ids[:-1]
    return ids


class LocalModelVLMServing_hf(LocalModel, VLMServing):
    """A local transformers VLM (``AutoModelForImageTextToText``) behind the ``VLMServing`` interface."""

    backend_name = "hf"

    def __init__(
        self,
        hf_model_name_or_path: str,
        hf_cache_dir: str | None = None,
        hf_local_dir: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_tokens: int = 512,
        seed: int | None = None,
        max_image_side: int | None = None,
        max_model_len: int | None = None,
        allow_downscale: bool = False,
    ) -> None:
        super().__init__(SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed))
        if batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, not {batch_size!r}")
        if max_model_len is not None and max_model_len < 1:
            raise ConfigError(f"max_model_len must be an integer >= 1 (or None), not {max_model_len!r}")
        self.hf_model_name_or_path = hf_model_name_or_path
        self.hf_cache_dir = hf_cache_dir
        self.hf_local_dir = hf_local_dir
        self.device = device  # as asked ("auto" stays "auto": it is part of the resume fingerprint)
        self._device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_image_side = max_image_side
        self.max_model_len = max_model_len
        self.allow_downscale = allow_downscale
        self._model_dir: Path | None = None
        self._config_sha256: str | None = None
        self._counter: PromptTokenCounter | None = None
        self._model: Any = None
        self._processor: Any = None
        self._grammars: structured.XGrammarProcessors | None = None
        self._torch_dtype: Any = None
        self._image_tokens: list[str] | None = None
        # The tokenizer mutates its padding state per call: the prefetch thread and the decoding
        # of answers never use it at the same time.
        self._tokenizer_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (e.g. to ship to Ray workers before loading): the lock stays behind."""
        state = self.__dict__.copy()
        state.pop("_tokenizer_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tokenizer_lock = threading.Lock()

    # ------------------------------------------------------------ properties

    @property
    def model(self) -> Any:
        """The loaded model, or None before the first ``chat``/``load`` and after ``cleanup``."""
        return self._model

    @property
    def processor(self) -> Any:
        return self._processor

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            device=self.device,
            dtype=self.dtype,
            batch_size=self.batch_size,
            config_sha256=self.config_sha256(),
            max_image_side=self.max_image_side,
            max_model_len=self.max_model_len,
            allow_downscale=self.allow_downscale,
        )
        return info

    def context_length(self) -> int | None:
        """``max_model_len``, else what the loaded model's config declares (None when unknown)."""
        if self.max_model_len is not None:
            return self.max_model_len
        return max_len_from_config(self._model.config) if self._model is not None else None

    # ------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Resolve the folder and load processor and model (no-op when already loaded)."""
        if self._model is not None:
            return
        transformers = require("transformers", "hf")
        self._device = resolve_device(self.device, "hf")
        self._torch_dtype = _resolve_dtype(self.dtype, self._device)
        model_dir = self.model_dir
        logger.info("Loading %s from %s (%s, %s)", self.model_id, model_dir, self._device, self._torch_dtype)
        processor = load_processor(model_dir)
        if not (getattr(processor, "chat_template", None) or processor.tokenizer.chat_template):
            raise UserError(
                f"{self.model_id} ({model_dir}) has no chat template: use an instruction-tuned "
                "model folder whose processor or tokenizer ships one."
            )
        self._processor = processor
        # device_map loads weights straight onto the GPU but needs accelerate; without it, move after.
        direct = self._device != "cpu" and is_importable("accelerate")
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            str(model_dir), dtype=self._torch_dtype, device_map=self._device if direct else None
        )
        if not direct and self._device != "cpu":
            model = model.to(self._device)
        self._model = model.eval()
        if self.is_smoke_test_model:
            logger.warning("%s is a tiny random-weight test model: its answers mean nothing", self.model_id)

    def cleanup(self) -> None:
        """Drop model and processor and free their memory; the next ``chat`` loads them again."""
        if self._model is None and self._processor is None:
            return
        self._model = None
        self._processor = None
        self._grammars = None
        self._counter = None
        self._image_tokens = None
        gc.collect()
        torch = require("torch", "hf")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------ chat

    def prepare_conversations(self, conversations: list[Conversation]) -> list[Conversation]:
        """The model's image placeholder tokens removed from the text (read from its processor)."""
        from dataflow_mm.serving.image_tokens import image_placeholder_tokens, without_image_tokens

        self.load()
        if self._image_tokens is None:
            self._image_tokens = image_placeholder_tokens(self._processor)
        return [without_image_tokens(c, self._image_tokens) for c in conversations]

    def check_budget(
        self, conversations: list[Conversation], sampling: SamplingParams
    ) -> list[Conversation | Completion]:
        """Count each request with the processor; those that cannot fit never reach ``generate``."""
        self.load()
        limit = self.context_length()
        if limit is None:
            return list(conversations)
        if self._counter is None or self._counter.processor is not self._processor:
            self._counter = PromptTokenCounter(self._processor)
        self._counter.forget_renders()
        checked, report = fit_to_budget(
            self._counter,
            conversations,
            max_new_tokens=sampling.max_tokens,
            max_model_len=limit,
            allow_downscale=self.allow_downscale,
            max_image_side=self.max_image_side,
        )
        report.record(self.stats)
        return checked

    def _chat_batch(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Completion]:
        """Prepare requests in order and generate each time ``batch_size`` of them are ready.

        The next batch (images decoded, chat template, processor) is prepared in a background
        thread while ``generate`` runs on this one, so memory holds about two batches of images.
        """
        self.load()
        if sampling.response_schema is not None:
            try:
                self._structured_processors().compile(sampling.response_schema)
            except ServingError as exc:  # every request of this call shares the schema
                return [Completion(text=None, error=row_error_text(exc)) for _ in conversations]
        if sampling.seed is not None:
            require("torch", "hf").manual_seed(sampling.seed)
        results: list[Completion | None] = [None] * len(conversations)
        try:
            for batch in prefetched(self._batches(conversations, results), name="hf-prepare"):
                completions = self._generate_fitting(batch, conversations, sampling)
                for position, completion in zip(batch.positions, completions, strict=True):
                    results[position] = completion
        finally:
            if self._counter is not None:
                self._counter.forget_renders()
        missing = row_error_text(ServingError("no answer"))
        return [c if c is not None else Completion(text=None, error=missing) for c in results]

    def _batches(self, conversations: Sequence[Conversation], results: list[Completion | None]) -> Iterator[_Batch]:
        """Batches of ``batch_size`` prepared requests; one that cannot be prepared gets its error in ``results``."""
        pending: list[_Prepared] = []
        for index, conversation in enumerate(conversations):
            try:
                pending.append(self._prepare(index, conversation))
            except RowError as exc:
                results[index] = Completion(text=None, error=row_error_text(exc))
            if len(pending) == self.batch_size or (pending and index == len(conversations) - 1):
                yield self._processed(pending)
                pending = []

    def _prepare(self, index: int, conversation: Conversation) -> _Prepared:
        """Prompt text from the model's own chat template, plus the request's images in memory."""
        template_messages, sources = split_images(conversation)
        images = [_shrink(to_pil(source), self.max_image_side) for source in sources]
        if self._counter is not None:  # the budget check rendered it already
            return index, self._counter.render(template_messages), images
        prompt = self._processor.apply_chat_template(template_messages, add_generation_prompt=True, tokenize=False)
        return index, prompt, images

    def _processed(self, chunk: list[_Prepared]) -> _Batch:
        """One left-padded batch of processor inputs (on the CPU) for ``chunk``."""
        texts = [prompt for _, prompt, _ in chunk]
        images = [image for _, _, request_images in chunk for image in request_images]
        with self._tokenizer_lock:
            inputs = self._processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return _Batch([position for position, _, _ in chunk], inputs)

    def _generation_kwargs(self, sampling: SamplingParams) -> dict[str, Any]:
        tokenizer = self._processor.tokenizer
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": tokenizer.pad_token_id}
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
            if sampling.min_p is not None:
                kwargs["min_p"] = sampling.min_p
        if sampling.repetition_penalty is not None:
            kwargs["repetition_penalty"] = sampling.repetition_penalty
        unsupported = [n for n in ("presence_penalty", "frequency_penalty") if getattr(sampling, n) is not None]
        if unsupported:
            raise UserError(f"the hf backend has no {' or '.join(unsupported)}; use vllm or api")
        if sampling.response_schema is not None:
            kwargs["logits_processor"] = [self._structured_processors().processor(sampling.response_schema)]
        return kwargs

    def _structured_processors(self) -> structured.XGrammarProcessors:
        """Grammar processors for structured answers, built once per loaded model."""
        if self._grammars is None:
            vocab_size = self._model.config.get_text_config().vocab_size
            self._grammars = structured.XGrammarProcessors(self._processor.tokenizer, vocab_size, self._eos_ids())
        return self._grammars

    def _eos_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._processor.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def _generate_fitting(
        self, batch: _Batch, conversations: Sequence[Conversation], sampling: SamplingParams
    ) -> list[Completion]:
        """``_generate``, or, when the device runs out of memory, each request of the batch on its own;
        a request that does not fit alone gets a ``ServingUnavailableError`` (pending)."""
        torch = require("torch", "hf")
        try:
            return self._generate(batch, sampling)
        except torch.OutOfMemoryError as exc:
            reason = " ".join(str(exc).split())[:200]
        # Outside the except block: the failed call's tensors are released with its traceback.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(batch.positions) == 1:
            error = ServingUnavailableError(
                f"out of device memory for this request alone ({reason}); a rerun tries again (free memory, "
                "or lower max_image_side / max_model_len)"
            )
            logger.warning("hf request %d not answered: %s", batch.positions[0], row_error_text(error))
            return [Completion(text=None, error=row_error_text(error))]
        logger.warning("no device memory for a batch of %d: generating its requests one by one", len(batch.positions))
        completions: list[Completion] = []
        for position in batch.positions:
            single = self._processed([self._prepare(position, conversations[position])])
            completions += self._generate_fitting(single, conversations, sampling)
        return completions

    def _generate(self, batch: _Batch, sampling: SamplingParams) -> list[Completion]:
        """One left-padded ``model.generate`` call for up to ``batch_size`` prepared requests."""
        torch = require("torch", "hf")
        inputs = batch.inputs.to(self._model.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self._torch_dtype)
        with torch.inference_mode():
            output = self._model.generate(**inputs, **self._generation_kwargs(sampling))
        prompt_length = inputs["input_ids"].shape[1]
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        eos_ids, pad_id = self._eos_ids(), self._processor.tokenizer.pad_token_id
        completions = []
        for row, new_ids in enumerate(output[:, prompt_length:].tolist()):
            token_ids = _trim(new_ids, eos_ids, pad_id)
            with self._tokenizer_lock:
                text = self._processor.tokenizer.decode(token_ids, skip_special_tokens=True).strip()
            completions.append(
                Completion(
                    text=text,
                    prompt_tokens=int(prompt_tokens[row]),
                    completion_tokens=len(token_ids),
                    token_ids=token_ids,
                    finish_reason=FINISH_LENGTH if len(token_ids) >= sampling.max_tokens else "stop",
                )
            )
        return completions
