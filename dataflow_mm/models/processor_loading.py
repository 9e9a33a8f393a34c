"""Load a VLM's processor (image processor + tokenizer + chat template) without torchvision.

``AutoProcessor`` builds every sub-processor a processor class declares. For video-capable
models (Qwen2-VL, Qwen2.5-VL, ...) that includes a video processor, which in transformers 5
exists only as a torchvision class: without torchvision ``AutoProcessor.from_pretrained``
fails ("Can't load video processor"). Images never need it, so when ``AutoProcessor`` fails we
load the same processor class minus its ``video_processor`` (``image_only_processor_class``).
The class is chosen from the folder's own configs, never from its name.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import UserError

_DROPPED_ATTRIBUTE = "video_processor"
_CONFIG_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


@cache
def image_only_processor_class(processor_class: type) -> type:
    """A subclass of ``processor_class`` without its ``video_processor`` sub-processor.

    transformers derives a processor's sub-processors from its ``__init__`` signature, so the
    subclass exposes the parent's signature minus ``video_processor``; the parent's ``__init__``
    then gets ``video_processor=None``. The subclass keeps the parent's name, so a processor
    saved from it reloads with ``AutoProcessor`` wherever torchvision is installed.
    """
    parent_signature = inspect.signature(processor_class.__init__)
    parameters = [p for name, p in parent_signature.parameters.items() if name != _DROPPED_ATTRIBUTE]
    accepted = tuple(p.name for p in parameters[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    attributes = [a for a in processor_class.get_attributes() if a != _DROPPED_ATTRIBUTE]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.update(zip(attributes, args, strict=False))
        processor_class.__init__(self, **kwargs)

    __init__.__signature__ = parent_signature.replace(parameters=parameters)  # type: ignore[attr-defined]

    def validate_init_kwargs(processor_config: dict, valid_kwargs: Any) -> tuple[dict, dict]:
        # from_pretrained reads accepted kwargs off __init__'s code object (here: *args/**kwargs only).
        return processor_class.validate_init_kwargs(processor_config, tuple(valid_kwargs) + accepted)

    namespace = {
        "__init__": __init__,
        "validate_init_kwargs": staticmethod(validate_init_kwargs),
        "__module__": processor_class.__module__,
        "__qualname__": processor_class.__qualname__,
        "__doc__": f"{processor_class.__name__} for images only (no video processor, no torchvision needed).",
    }
    return type(processor_class.__name__, (processor_class,), namespace)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a model folder's config), or ``{}`` when it is missing or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def processor_class_of(model_dir: str | Path) -> type | None:
    """The processor class a model folder declares (processor/preprocessor/tokenizer config), else
    the one transformers maps its ``config.json`` ``model_type`` to; None when neither is known."""
    transformers = require("transformers", "hf")
    folder = Path(model_dir).expanduser()
    for name in _CONFIG_FILES:
        class_name = read_json_object(folder / name).get("processor_class")
        if isinstance(class_name, str) and isinstance(getattr(transformers, class_name, None), type):
            return getattr(transformers, class_name)
    try:
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

        config = transformers.AutoConfig.from_pretrained(str(folder))
        return PROCESSOR_MAPPING[type(config)]
    except Exception:
        return None


def _use_left_padding(processor: Any) -> None:
    """Batched generation needs left padding (new tokens follow every prompt) and a pad token."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token


def load_processor(model_dir: str | Path) -> Any:
    """The processor of a local model folder, padding on the left, with or without torchvision.

    Tries ``AutoProcessor``; if that fails and the folder's processor class has a video
    processor, loads the image-only variant of that class. Raises ``UserError`` naming both
    failures when neither works.
    """
    transformers = require("transformers", "hf")
    folder = str(Path(model_dir).expanduser())
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder)
    except Exception as auto_error:
        processor = _load_image_only(folder, auto_error)
    _use_left_padding(processor)
    return processor


def _load_image_only(folder: str, auto_error: Exception) -> Any:
    processor_class = processor_class_of(folder)
    if processor_class is None or _DROPPED_ATTRIBUTE not in processor_class.get_attributes():
        raise UserError(
            f"Cannot load the processor of {folder}: AutoProcessor failed ({type(auto_error).__name__}: "
            f"{auto_error}) and no image-only fallback applies (processor class: "
            f"{getattr(processor_class, '__name__', 'unknown')})."
        ) from auto_error
    try:
        return image_only_processor_class(processor_class).from_pretrained(folder)
    except Exception as fallback_error:
        raise UserError(
            f"Cannot load the processor of {folder}: AutoProcessor failed ({type(auto_error).__name__}: "
            f"{auto_error}); the image-only {processor_class.__name__} failed too "
            f"({type(fallback_error).__name__}: {fallback_error})."
        ) from fallback_error
