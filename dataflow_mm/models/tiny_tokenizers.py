"""The tiny models' tokenizers and chat templates, learned offline from a few dozen sentences.

Every build is byte-identical: the merges are learned here with ties broken alphabetically.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from dataflow_mm.common.deps import require

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


def qwen_tokenizer() -> Any:
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


def llama_tokenizer() -> Any:
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


def bert_tokenizer() -> Any:
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


def clip_tokenizer() -> Any:
    """A ``CLIPTokenizer`` (lower-cased byte-level BPE whose word ends carry ``</w>``)."""
    transformers = require("transformers", "hf")
    backend = transformers.CLIPTokenizer()._tokenizer
    words = ((*piece[:-1], piece[-1] + "</w>") for text in _SENTENCES for piece in _pieces(backend, text) if piece)
    merges = _learn_bpe(words)
    alphabet = _bytes_to_unicode()
    base = [*alphabet, *(c + "</w>" for c in alphabet)]
    vocab = _append_tokens(_bpe_vocab(base, merges), ["<|startoftext|>", "<|endoftext|>"])
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
