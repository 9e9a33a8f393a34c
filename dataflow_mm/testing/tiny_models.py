"""Tiny random-weight models of the real architectures, built offline in seconds.

Tests and smoke runs need models that exercise the real loading, chat-template, batching and
decoding code, but nothing can be downloaded. These builders make Qwen2.5-VL, LLaVA-NeXT,
BLIP image-text matching, CLIP and OWLv2 (open-vocabulary detection) folders (~1 MB each) with ``save_pretrained``: real
configs shrunk to hidden size 64 and 2 layers, tokenizers (the architectures' own
``tokenizers``-backed classes) with merges learned from a few dozen sentences, processors built
from their classes, and real-looking chat templates.
Weights are random (fixed seeds, so every build is identical): their text means nothing.

The Qwen2.5-VL and LLaVA-NeXT folders also load in vLLM as built (its CPU build included):
text head size 32 (the smallest vLLM's CPU attention supports), the processor files real
Qwen2.5-VL checkpoints ship (``preprocessor_config.json``, plus a video-processor config), and
LLaVA-NeXT weights under the real llava-hf key layout (``vision_tower.vision_model.*``).

Each folder holds a marker file (``dataflow_mm_tiny_model.json``) so a serving backend can
tell it is a smoke-test model (``is_tiny_model``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dataflow_mm.deps import require

BUILDER_VERSION = "v2"  # bump whenever a build changes: cached folders are reused by name
MARKER_FILE = "dataflow_mm_tiny_model.json"
ENV_TINY_DIR = "DATAFLOW_MM_TINY_DIR"
DEFAULT_TINY_DIR = Path("~/.cache/dataflow_mm/tiny_models")
_SEED = 0

# Words the project's prompts use, so prompts tokenize into real subwords, not bytes.
_SENTENCES = (
    "Describe the region marked by the red box in the image.",
    "Describe the marked region in one sentence.",
    "What is inside the red box?",
    "The region shows a red car parked on the street.",
    "A small dog is sleeping on a sofa.",
    "A brown dog runs across the green grass.",
    "What is the difference between the two images?",
    "Describe the difference between the first image and the second image.",
    "The car in the second image is blue instead of red.",
    "There is no difference inside the box.",
    "The object in the region is a bicycle leaning on a wall.",
    "A person is holding an umbrella in the rain.",
    "Answer yes or no: is there a dog in the image?",
    "Yes, there is a dog in the image.",
    "No, the image does not contain a car.",
    "The bounding box covers the left part of the picture.",
    "Write a short caption for this picture.",
    "A white cat sits next to a window.",
    "Two people walk along the beach at sunset.",
    "The red box marks a traffic light at the corner.",
    "Compare the marked regions and describe what changed.",
    "An object was added to the second image.",
    "An object was removed from the first image.",
    "The color of the car changed from red to white.",
    "You are a helpful assistant.",
    "Please describe the image in detail.",
    "The image is a photo of a city street with cars and people.",
    "A green tree stands behind the house.",
    "A plate of food on a wooden table.",
    "The sky is blue and the clouds are white.",
    "Give the category of the object in the box.",
    "Is the caption consistent with the image region?",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 and symbols , . ; : ! ? ( ) [ ] { } \" ' - _ / % # @",
)

# Chat templates modelled on the real checkpoints' (Qwen2.5-VL-Instruct, llava-v1.6-mistral).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}"
    "{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' }}{% for part in parts if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{{ '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}"
    "{% for part in parts if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in parts if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' }}{% for part in parts if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{{ '</s>' }}"
    "{% endif %}"
    "{% endfor %}"
)

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


# ---------------------------------------------------------------- tokenizers
#
# The ``tokenizers`` trainers break ties between equally frequent pairs in hash order, which
# changes from one process to the next; a tiny corpus is all ties. So the merges are learned
# here (classic BPE, ties broken alphabetically) on words cut by each tokenizer class's own
# ``tokenizers`` normalizer and pre-tokenizer, and every build is byte-identical.

_MAX_MERGES = 500


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet, in byte order (0..255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _pieces(backend: Any, text: str) -> list[str]:
    """``text`` normalized and pre-tokenized exactly as the ``tokenizers`` pipeline ``backend`` does."""
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    return [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def _learn_bpe(words: Iterable[tuple[str, ...]]) -> list[tuple[str, str]]:
    """BPE merges for ``words`` (symbol tuples): most frequent pair first, ties alphabetical."""
    counts = Counter(words)
    merges: list[tuple[str, str]] = []
    while len(merges) < _MAX_MERGES:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in counts.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, count in counts.items():
            merged[_merge_pair(symbols, best)] += count
        counts = merged
    return merges


def _bpe_vocab(base: Iterable[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Vocab ids: ``base`` symbols first, then every merge result in merge order."""
    vocab: dict[str, int] = {}
    for token in [*base, *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    return vocab


def _append_tokens(vocab: dict[str, int], tokens: Iterable[str]) -> dict[str, int]:
    """``vocab`` with ``tokens`` appended at the next free ids (existing ones kept)."""
    vocab = dict(vocab)
    for token in tokens:
        vocab.setdefault(token, max(vocab.values(), default=-1) + 1)
    return vocab


def _add_special(tokenizer: Any, tokens: Iterable[str]) -> None:
    """Register ``tokens`` as special added tokens (never split, skipped when decoding)."""
    tokenizers = require("tokenizers", "hf")
    tokenizer.add_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in tokens])


def _qwen_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` (byte-level BPE) with the ChatML and vision special tokens of Qwen2.5-VL."""
    transformers = require("transformers", "hf")
    backend = transformers.Qwen2Tokenizer()._tokenizer
    words = (tuple(piece) for text in _SENTENCES for piece in _pieces(backend, text))
    merges = _learn_bpe(words)
    vocab = _append_tokens(_bpe_vocab(_bytes_to_unicode(), merges), QWEN_SPECIAL_TOKENS)
    tokenizer = transformers.Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=2048,
    )
    _add_special(tokenizer, QWEN_SPECIAL_TOKENS)
    return tokenizer


def _llama_tokenizer() -> Any:
    """A ``LlamaTokenizer`` (SentencePiece-style BPE, byte fallback, adds ``<s>``) plus ``<image>``/``<pad>``."""
    transformers = require("transformers", "hf")
    backend = transformers.LlamaTokenizer()._tokenizer
    # The Metaspace pre-tokenizer keeps a sentence whole; learn merges within "▁word" chunks.
    words = [
        tuple(chunk)
        for text in _SENTENCES
        for piece in _pieces(backend, text)
        for chunk in re.findall("▁?[^▁]+|▁", piece)
    ]
    merges = _learn_bpe(words)
    chars = sorted({c for word in words for c in word})
    base = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)), *chars]
    vocab = _append_tokens(_bpe_vocab(base, merges), ["<image>", "<pad>"])
    tokenizer = transformers.LlamaTokenizer(
        vocab=vocab, merges=merges, pad_token="<pad>", add_bos_token=True, model_max_length=2048
    )
    _add_special(tokenizer, ["<image>", "<pad>"])
    return tokenizer


def _bert_tokenizer() -> Any:
    """A lower-casing WordPiece ``BertTokenizer`` with BLIP's ``[DEC]`` (bos) and ``[ENC]`` tokens.

    WordPiece matches the longest vocab entry first, so whole words plus single characters
    (and their ``##`` continuations) are a complete vocab.
    """
    transformers = require("transformers", "hf")
    backend = transformers.BertTokenizer()._tokenizer
    words = sorted({piece for text in _SENTENCES for piece in _pieces(backend, text)})
    chars = sorted({c for word in words for c in word})
    base = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *words]
    vocab = _append_tokens(_bpe_vocab(base, []), ["[DEC]", "[ENC]"])
    tokenizer = transformers.BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    _add_special(tokenizer, ["[DEC]", "[ENC]"])
    return tokenizer


def _clip_tokenizer() -> Any:
    """A ``CLIPTokenizer`` (lower-cased byte-level BPE whose word ends carry ``</w>``)."""
    transformers = require("transformers", "hf")
    backend = transformers.CLIPTokenizer()._tokenizer
    words = ((*piece[:-1], piece[-1] + "</w>") for text in _SENTENCES for piece in _pieces(backend, text) if piece)
    merges = _learn_bpe(words)
    alphabet = _bytes_to_unicode()
    base = [*alphabet, *(c + "</w>" for c in alphabet)]
    vocab = _append_tokens(_bpe_vocab(base, merges), ["<|startoftext|>", "<|endoftext|>"])
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


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
        "note": "Tiny random-weight test model built by dataflow_mm.testing.tiny_models; its text means nothing.",
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


def build_tiny_qwen2_5_vl(out_dir: str | Path) -> Path:
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``), images 56-112 px, saved to ``out_dir``."""
    transformers = require("transformers", "hf")
    from dataflow_mm.serving.processor_loading import image_only_processor_class

    tokenizer = _qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    # head_dim = 64 / 2 = 32 (vLLM's CPU attention supports 32 and up), so mrope_section sums to 16.
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 2048,
        "max_window_layers": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "out_hidden_size": 64,  # must equal the text hidden size
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
    tokenizer = _llama_tokenizer()
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
    tokenizer = _bert_tokenizer()
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


def build_tiny_clip(out_dir: str | Path) -> Path:
    """CLIP (``CLIPModel`` + ``CLIPProcessor``/``CLIPTokenizer``), 56 px images, 32-dim embeddings."""
    transformers = require("transformers", "hf")
    tokenizer = _clip_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": ids("<|startoftext|>"),
        "eos_token_id": ids("<|endoftext|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
    }
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
    tokenizer = _clip_tokenizer()
    tokenizer.model_max_length = 16
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
        "bos_token_id": ids("<|startoftext|>"),
        "eos_token_id": ids("<|endoftext|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
    }
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
KINDS = tuple(BUILDERS)


# ---------------------------------------------------------------- cache


def is_tiny_model(path: str | Path | None) -> bool:
    """True when ``path`` is a folder built here (it holds the random-weights marker file)."""
    if path is None:
        return False
    try:
        marker = json.loads((Path(path).expanduser() / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("random_weights") is True


def tiny_models_root(root: str | Path | None = None) -> Path:
    """Where tiny models live: ``root``, else ``$DATAFLOW_MM_TINY_DIR``, else ``~/.cache/dataflow_mm/tiny_models``."""
    chosen = root or os.environ.get(ENV_TINY_DIR) or DEFAULT_TINY_DIR
    return Path(chosen).expanduser()


def tiny_model_path(kind: str, root: str | Path | None = None) -> Path:
    """The folder of the tiny ``kind`` model, built on first use and reused afterwards.

    The build goes to a temporary sibling folder that is then renamed into place, so a reader
    never sees a half-written folder and concurrent builders cannot corrupt each other (the
    first rename wins; the others discard their copy).
    """
    if kind not in BUILDERS:
        raise ValueError(f"Unknown tiny model kind {kind!r}; expected one of {', '.join(KINDS)}")
    base = tiny_models_root(root)
    target = base / f"{kind}-{BUILDER_VERSION}"
    if is_tiny_model(target):
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=base))
    try:
        BUILDERS[kind](staging)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    """Atomically rename ``staging`` to ``target`` unless another builder finished first."""
    if target.exists() and not is_tiny_model(target):
        # A stale or foreign folder under our versioned name: move it aside, then drop it.
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        with contextlib.suppress(OSError):  # someone else moved it already
            os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        if not is_tiny_model(target):  # not "lost the race to a finished build": a real error
            raise
