"""Builders of the tiny random-weight model folders (Qwen2.5-VL, LLaVA-NeXT, BLIP ITM, CLIP, OWLv2).

Each writes a ``save_pretrained`` folder with seeded random weights and, last, the marker file that
``dataflow_mm.models.tiny.is_tiny_model`` checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dataflow_mm.common.deps import require
from dataflow_mm.models.tiny_tokenizers import (
    LLAVA_NEXT_CHAT_TEMPLATE,
    QWEN2_5_VL_CHAT_TEMPLATE,
    bert_tokenizer,
    clip_tokenizer,
    llama_tokenizer,
    qwen_tokenizer,
)

BUILDER_VERSION = "v2"  # bump whenever a build changes: cached folders are reused by name
MARKER_FILE = "dataflow_mm_tiny_model.json"
_SEED = 0


# ---------------------------------------------------------------- models


def _random_model(model_class: Any, config: Any) -> Any:
    """``model_class(config)`` with seeded random weights, leaving the caller's RNG untouched."""
    torch = require("torch", "hf")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        return model_class(config).to(torch.float32).eval()


def _write_marker(out_dir: Path, kind: str) -> None:
    marker = {
        "kind": kind,
        "random_weights": True,
        "builder_version": BUILDER_VERSION,
        "note": "Tiny random-weight test model built by dataflow_mm.models.tiny; its text means nothing.",
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _save(
    out_dir: str | Path, kind: str, model: Any, processor: Any, finish: Callable[[Path], None] | None = None
) -> Path:
    """Save model and processor with ``save_pretrained``, then ``finish(out)``; the marker is written last."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if finish is not None:
        finish(out)
    _write_marker(out, kind)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _qwen_checkpoint_processor_files(out: Path) -> None:
    """Add the processor files real Qwen2.5-VL checkpoints ship next to ``processor_config.json``.

    vLLM loads the full ``Qwen2_5_VLProcessor``, video processor included, which needs a video
    processor config: ``video_preprocessor_config.json``, else the legacy ``preprocessor_config.json``
    (what the hub checkpoints have). Both are written, from the image processor
    ``save_pretrained`` stored, in the legacy form (``min_pixels``/``max_pixels`` and
    ``processor_class`` included), so every loader finds the same settings. Nothing is built
    from a video processor class: those need torchvision, which the main environment lacks
    (``load_processor`` then falls back to the image-only processor).
    """
    processor_config = json.loads((out / "processor_config.json").read_text(encoding="utf-8"))
    image = dict(processor_config["image_processor"])
    processor_class = processor_config["processor_class"]
    legacy = {
        "min_pixels": image["size"]["shortest_edge"],
        "max_pixels": image["size"]["longest_edge"],
        "processor_class": processor_class,
    }
    _write_json(out / "preprocessor_config.json", {**image, **legacy})
    video = {key: value for key, value in image.items() if key != "image_processor_type"}
    video.update(
        legacy, video_processor_type="Qwen2VLVideoProcessor", do_sample_frames=False, min_frames=4, max_frames=768
    )
    _write_json(out / "video_preprocessor_config.json", video)


def _llava_checkpoint_weight_names(out: Path) -> None:
    """Rename the CLIP tower's weights to the layout of real llava-hf checkpoints.

    transformers 5.2x saves them as ``vision_tower.embeddings...``; hub checkpoints (and vLLM's
    loader) use ``vision_tower.vision_model.embeddings...``, which transformers loads as well.
    """
    safetensors_torch = require("safetensors.torch", "hf")
    path = out / "model.safetensors"
    tensors = safetensors_torch.load_file(str(path))
    prefix, hub_prefix = "vision_tower.", "vision_tower.vision_model."
    renamed = {
        hub_prefix + key[len(prefix) :] if key.startswith(prefix) and not key.startswith(hub_prefix) else key: tensor
        for key, tensor in tensors.items()
    }
    safetensors_torch.save_file(renamed, str(path), metadata={"format": "pt"})


# The text tower every tiny language model shares: 64 wide, 2 layers.
_SMALL_TEXT_TOWER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}


def build_tiny_qwen2_5_vl(out_dir: str | Path, head_dim: int = 32) -> Path:
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``), images 56-112 px, saved to ``out_dir``.

    ``head_dim``: of the text and vision attention (2 heads each): 32 by default (the smallest vLLM's CPU
    attention takes); 64 or 128 for a GPU, whose FlashAttention kernels take only such sizes."""
    transformers = require("transformers", "hf")
    from dataflow_mm.models.processor_loading import image_only_processor_class

    tokenizer = qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    # head_dim = 64 / 2 = 32 (vLLM's CPU attention supports 32 and up), so mrope_section sums to 16.
    width = 2 * head_dim
    quarter = head_dim // 8
    mrope = [quarter, 3 * quarter // 2, 3 * quarter // 2]  # sums to head_dim / 2: [4, 6, 6] at 32
    text_config = {
        "vocab_size": len(tokenizer),
        **_SMALL_TEXT_TOWER,
        **({} if head_dim == 32 else {"hidden_size": width, "intermediate_size": 2 * width}),
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 2048,
        "max_window_layers": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32 if head_dim == 32 else width,
        "intermediate_size": 64 if head_dim == 32 else 2 * width,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "out_hidden_size": 64 if head_dim == 32 else width,  # must equal the text hidden size
    }
    config = transformers.Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    model = _random_model(transformers.Qwen2_5_VLForConditionalGeneration, config)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    image_processor = transformers.Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    # No torchvision -> no video processor; the image-only class saves as "Qwen2_5_VLProcessor".
    processor_class = image_only_processor_class(transformers.Qwen2_5_VLProcessor)
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_5_VL_CHAT_TEMPLATE
    )
    return _save(out_dir, "qwen2_5_vl", model, processor, finish=_qwen_checkpoint_processor_files)


def build_tiny_llava_next(out_dir: str | Path) -> Path:
    """LLaVA-NeXT (CLIP vision tower 56 px, Mistral text model, anyres up to 112 px), saved to ``out_dir``."""
    transformers = require("transformers", "hf")
    tokenizer = llama_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    image_size, patch_size = 56, 14
    pinpoints = [[56, 56], [56, 112], [112, 56], [112, 112]]
    vision_config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text_config = transformers.MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: the smallest vLLM's CPU attention supports
        num_key_value_heads=1,
        max_position_embeddings=2048,
        sliding_window=None,
        bos_token_id=ids("<s>"),
        eos_token_id=ids("</s>"),
        pad_token_id=ids("<pad>"),
    )
    config = transformers.LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(image_size // patch_size) ** 2,
    )
    model = _random_model(transformers.LlavaNextForConditionalGeneration, config)
    model.generation_config.eos_token_id = ids("</s>")
    model.generation_config.pad_token_id = ids("<pad>")
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # the CLIP tower's CLS token
    )
    return _save(out_dir, "llava_next", model, processor, finish=_llava_checkpoint_weight_names)


def build_tiny_blip_itm(out_dir: str | Path) -> Path:
    """BLIP image-text matching (``BlipForImageTextRetrieval`` + ``BlipProcessor``), 64 px images."""
    transformers = require("transformers", "hf")
    tokenizer = bert_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    vision_hidden = 32
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "encoder_hidden_size": vision_hidden,
        "intermediate_size": 128,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "bos_token_id": ids("[DEC]"),
        "eos_token_id": ids("[SEP]"),
        "pad_token_id": ids("[PAD]"),
        "sep_token_id": ids("[SEP]"),
    }
    vision_config = {
        "hidden_size": vision_hidden,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
        "initializer_range": 0.02,  # BLIP's default (1e-10) would make every score the same
    }
    config = transformers.BlipConfig(
        text_config=text_config, vision_config=vision_config, projection_dim=32, image_text_hidden_size=32
    )
    model = _random_model(transformers.BlipForImageTextRetrieval, config)
    image_processor = transformers.BlipImageProcessorPil(size={"height": 64, "width": 64})
    processor = transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(out_dir, "blip_itm", model, processor)


def _clip_family_configs(
    tokenizer: Any, max_positions: int, image_size: int, patch_size: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tiny text and vision tower settings CLIP and OWLv2 share (64-dim text, 32-dim vision, 2 layers)."""
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        **_SMALL_TEXT_TOWER,
        "num_attention_heads": 4,
        "max_position_embeddings": max_positions,
        "bos_token_id": ids("<|startoftext|>"),
        "eos_token_id": ids("<|endoftext|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    return text_config, vision_config


def build_tiny_clip(out_dir: str | Path) -> Path:
    """CLIP (``CLIPModel`` + ``CLIPProcessor``/``CLIPTokenizer``), 56 px images, 32-dim embeddings."""
    transformers = require("transformers", "hf")
    tokenizer = clip_tokenizer()
    text_config, vision_config = _clip_family_configs(tokenizer, max_positions=77, image_size=56, patch_size=14)
    config = transformers.CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)
    model = _random_model(transformers.CLIPModel, config)
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
    )
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(out_dir, "clip", model, processor)


def build_tiny_owlv2(out_dir: str | Path) -> Path:
    """OWLv2 open-vocabulary detection (``Owlv2ForObjectDetection`` + ``Owlv2Processor``), 64 px images.

    Patch 16 gives 16 candidate boxes per image, the 4x4 patch grid cells (the box head's last layer
    is zero, so only OWLv2's box bias is left); queries are padded to 16 tokens, as the real
    checkpoints' processors do. The class head needs ``projection_dim`` equal to the text hidden size.
    """
    transformers = require("transformers", "hf")
    tokenizer = clip_tokenizer()
    tokenizer.model_max_length = 16
    text_config, vision_config = _clip_family_configs(tokenizer, max_positions=16, image_size=64, patch_size=16)
    config = transformers.Owlv2Config(text_config=text_config, vision_config=vision_config, projection_dim=64)
    model = _random_model(transformers.Owlv2ForObjectDetection, config)
    torch = require("torch", "hf")
    with torch.no_grad():  # boxes = the patch grid cells (the box bias), as from an untrained real box head
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    image_processor = transformers.Owlv2ImageProcessorPil(size={"height": 64, "width": 64})
    processor = transformers.Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(out_dir, "owlv2", model, processor)


BUILDERS: dict[str, Callable[[str | Path], Path]] = {
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "llava_next": build_tiny_llava_next,
    "blip_itm": build_tiny_blip_itm,
    "clip": build_tiny_clip,
    "owlv2": build_tiny_owlv2,
}
