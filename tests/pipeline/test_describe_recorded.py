"""Every serving's and scorer's ``describe()`` stays what it was when recorded (keys, values and order).

``describe()`` feeds the resume fingerprint of every step that uses a model: a changed key or value
reruns finished steps of users' caches. The values below were recorded from the code before the
serving/scoring modules were split and their shared skeletons merged; any refactoring must keep them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dataflow_mm.models.resolver import config_sha256
from dataflow_mm.models.tiny import ENV_TINY_DIR
from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from dataflow_mm.scoring.object_detection import OwlDetector
from dataflow_mm.scoring.text_similarity import AutoTextSimilarity, ClipTextSimilarity, SentenceTransformerSimilarity
from dataflow_mm.serving.api_serving import APIVLMServing_openai
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.serving.vllm_engine import installed_vllm_version
from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

MISSING = "no-such-org/no-such-model"


def _scorer(name_key: str, name: str, smoke: bool, **extra: Any) -> list[tuple[str, Any]]:
    return [(name_key, name), ("model", MISSING), ("device", "auto"), *extra.items(), ("smoke_test_model", smoke)]


OWL_EXTRA = {"threshold": 0.05, "iou": 0.5, "max_boxes": 10}

# (how to build it, its describe() as recorded: the items in order)
SCORERS: dict[str, tuple[Callable[[], Any], list[tuple[str, Any]]]] = {
    "clip_image_missing": (lambda: ClipImageSimilarity(MISSING), _scorer("scorer", "clip_image", False)),
    "clip_image_tiny": (
        lambda: ClipImageSimilarity(MISSING, allow_tiny_fallback=True),
        _scorer("scorer", "clip_image", True),
    ),
    "blip_itm_missing": (lambda: BlipITMScorer(MISSING), _scorer("scorer", "blip_itm", False)),
    "blip_itm_tiny": (lambda: BlipITMScorer(MISSING, allow_tiny_fallback=True), _scorer("scorer", "blip_itm", True)),
    "owl_missing": (lambda: OwlDetector(MISSING), _scorer("detector", "owl", False, **OWL_EXTRA)),
    "owl_tiny": (
        lambda: OwlDetector(MISSING, allow_tiny_fallback=True),
        _scorer("detector", "owl", True, **OWL_EXTRA),
    ),
    "auto_text_missing": (lambda: AutoTextSimilarity(MISSING), _scorer("scorer", "auto", False)),
    "auto_text_tiny": (lambda: AutoTextSimilarity(MISSING, allow_tiny_fallback=True), _scorer("scorer", "auto", True)),
    "clip_text_missing": (lambda: ClipTextSimilarity(MISSING), _scorer("scorer", "clip_text", False)),
    "clip_text_tiny": (
        lambda: ClipTextSimilarity(MISSING, allow_tiny_fallback=True),
        _scorer("scorer", "clip_text", True),
    ),
    "sentence_transformers_missing": (
        lambda: SentenceTransformerSimilarity(MISSING),
        _scorer("scorer", "sentence_transformers", False),
    ),
}


@pytest.mark.parametrize("case", list(SCORERS))
def test_scorer_describe_is_as_recorded(case: str, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_TINY_DIR, str(tiny_models_dir))
    build, recorded = SCORERS[case]
    assert list(build().describe().items()) == recorded


def _sampling(max_tokens: int) -> dict[str, Any]:
    return {"temperature": 0.7, "top_p": 0.9, "max_tokens": max_tokens, "seed": None}


def test_hf_serving_describe_is_as_recorded(tiny_qwen_dir: Path) -> None:
    described = LocalModelVLMServing_hf(str(tiny_qwen_dir)).describe()
    assert list(described.items()) == [
        ("backend", "hf"),
        ("model", str(tiny_qwen_dir)),
        ("sampling", _sampling(512)),
        ("smoke_test_model", True),
        ("device", "auto"),
        ("dtype", "auto"),
        ("batch_size", 8),
        ("config_sha256", config_sha256(tiny_qwen_dir)),
        ("max_image_side", None),
        ("max_model_len", None),
        ("allow_downscale", False),
    ]


def test_vllm_serving_describe_is_as_recorded(tiny_qwen_dir: Path) -> None:
    described = LocalModelVLMServing_vllm(str(tiny_qwen_dir)).describe()  # no engine starts: nothing loads
    assert list(described.items()) == [
        ("backend", "vllm"),
        ("model", str(tiny_qwen_dir)),
        ("sampling", _sampling(1024)),
        ("smoke_test_model", True),
        ("tensor_parallel_size", 1),
        ("dtype", "auto"),
        ("max_model_len", 2048),
        ("gpu_memory_utilization", 0.9),
        ("limit_mm_per_prompt", 1),
        ("enforce_eager", False),
        ("mm_processor_kwargs", {"max_pixels": 12544}),
        ("engine_seed", None),
        ("engine_kwargs", {}),
        ("config_sha256", config_sha256(tiny_qwen_dir)),
        ("allow_downscale", False),
        ("vllm_version", installed_vllm_version()),
    ]


def test_api_serving_describe_is_as_recorded() -> None:
    described = APIVLMServing_openai("http://127.0.0.1:9/v1", "m", api_key_env=None).describe()
    assert list(described.items()) == [
        ("backend", "api"),
        ("model", "m"),
        ("sampling", _sampling(512)),
        ("smoke_test_model", False),
        ("api_url", "http://127.0.0.1:9/v1/chat/completions"),
        ("max_image_side", 1024),
        ("image_format", "JPEG"),
    ]
