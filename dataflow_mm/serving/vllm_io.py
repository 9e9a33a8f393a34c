"""What goes into vLLM's engine and what comes out: image arrays, sampling parameters, Completions.

``engine_image`` gives the image form vLLM takes without another conversion, ``sampling_params``
turns the common ``SamplingParams`` into vLLM's (with the model's own penalties), and
``completion_of`` / ``failed_completion`` turn an engine output or a failed request into a
``Completion`` (a prompt that does not fit is a ``PromptTooLongError``). An output that finished with
``error`` (vLLM's retryable request-level failure, e.g. a multimodal cache miss) or ``abort`` is no
answer: its row gets a ``ServingUnavailableError`` (pending: a rerun sends it again), never empty text.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from dataflow_mm.common.errors import (
    PromptTooLongError,
    RowError,
    ServingError,
    ServingUnavailableError,
    row_error_text,
)
from dataflow_mm.common.logger import get_logger
from dataflow_mm.serving import structured
from dataflow_mm.serving.base import Completion, SamplingParams

logger = get_logger("serving.vllm")

# Phrases vLLM uses when a prompt does not fit the context window.
_TOO_LONG_MARKERS = ("maximum model length", "maximum context length", "too long")
# generation_config settings taken from the model (as transformers' generate takes them).
_MODEL_SAMPLING_DEFAULTS = ("repetition_penalty",)
# finish_reason values of an output that holds no answer (vLLM 0.32 ``FinishReason``: ABORT, ERROR).
UNANSWERED_FINISH_REASONS = ("abort", "error")


def engine_image(image: Image.Image) -> Any:
    """A decoded RGB image in the form vLLM takes as it is: a ``uint8`` HxWx3 array.

    Given a PIL image, vLLM's parser applies the EXIF orientation (a full copy, even when there is
    none) and the processor converts it to an array (another copy), in the thread that feeds the
    engine. The array is made here instead, in the build threads. Images with a side of at most 3
    pixels stay PIL images: an array that small has an ambiguous channel axis for the processor.
    """
    if min(image.size) <= 3:
        return image
    return np.asarray(image)


def model_sampling_defaults(llm: Any) -> dict[str, Any]:
    """The model's generation_config penalties (e.g. Qwen2.5-VL's repetition_penalty 1.05).

    transformers' ``generate`` applies them by default and vLLM's server does too, but
    ``LLM.generate`` with explicit SamplingParams does not: added here so both local backends
    sample alike. Temperature, top_p and max_tokens always come from ``SamplingParams``.
    """
    try:
        defaults = llm.model_config.get_diff_sampling_param()
    except Exception:
        return {}
    return {k: v for k, v in defaults.items() if k in _MODEL_SAMPLING_DEFAULTS}


def sampling_params(vllm: Any, llm: Any, sampling: SamplingParams) -> Any:
    """vLLM's ``SamplingParams`` for ``sampling`` on the engine ``llm`` (the ``vllm`` module passed in)."""
    kwargs: dict[str, Any] = {**model_sampling_defaults(llm), "max_tokens": int(sampling.max_tokens)}
    if sampling.greedy:
        kwargs.update(temperature=0.0, top_p=1.0)
    else:
        kwargs.update(temperature=float(sampling.temperature), top_p=float(sampling.top_p))
    if sampling.seed is not None and not sampling.greedy:  # a seed makes vLLM sample per request (slower)
        kwargs["seed"] = int(sampling.seed)
    kwargs.update(sampling.extras())
    if sampling.response_schema is not None:
        kwargs["structured_outputs"] = structured.vllm_structured_outputs(sampling.response_schema)
    return vllm.SamplingParams(**kwargs)


def completion_of(output: Any) -> Completion:
    """The Completion of one ``RequestOutput`` (its best answer, stripped as the transformers backend does)."""
    if not output.outputs:
        return Completion(text=None, error=row_error_text(ServingError("vLLM returned no output")))
    best = output.outputs[0]
    finish_reason = getattr(best, "finish_reason", None)
    if str(finish_reason) in UNANSWERED_FINISH_REASONS:  # str(): vLLM's FinishReason enum prints its name
        error = ServingUnavailableError(
            f"the vLLM engine finished the request with finish_reason={str(finish_reason)!r} and no answer "
            f"({len(best.token_ids)} tokens generated)"
        )
        logger.warning("vllm request %s not answered: %s", getattr(output, "request_id", "?"), row_error_text(error))
        return Completion(text=None, error=row_error_text(error))
    token_ids = [int(t) for t in best.token_ids]
    prompt_ids = getattr(output, "prompt_token_ids", None)
    return Completion(
        text=best.text.strip(),
        prompt_tokens=len(prompt_ids) if prompt_ids is not None else None,
        completion_tokens=len(token_ids),
        token_ids=token_ids,
        finish_reason=finish_reason,
    )


def failed_completion(exc: Exception) -> Completion:
    """The error Completion of a request the engine refused (too long for the context, or any other cause)."""
    message = f"{type(exc).__name__}: {exc}"
    lowered = message.lower()
    error: RowError = (
        PromptTooLongError(message) if any(marker in lowered for marker in _TOO_LONG_MARKERS) else ServingError(message)
    )
    logger.warning("vllm request failed: %s", row_error_text(error))
    return Completion(text=None, error=row_error_text(error))
