"""Provenance is configuration: every serving's and scorer's ``describe()`` is the same before and after
its model loads (it feeds the resume fingerprint, so a change would rerun finished steps).

The cases cover the tiny-model fallback (the model name does not exist), where the folder that
loads is not the one the name points to, and ``AutoTextSimilarity``, which picks its class on load.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dataflow_mm.scoring
import dataflow_mm.serving
from dataflow_mm.common.deps import is_importable
from dataflow_mm.models.tiny import ENV_TINY_DIR
from dataflow_mm.scoring._common import LazyScorer
from dataflow_mm.scoring.image_similarity import ClipImageSimilarity
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from dataflow_mm.scoring.object_detection import OwlDetector
from dataflow_mm.scoring.text_similarity import AutoTextSimilarity, ClipTextSimilarity, SentenceTransformerSimilarity
from dataflow_mm.serving.api_serving import APIVLMServing_openai
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.serving.messages import build_conversation
from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm
from tests.support.openai_test_server import OpenAITestServer

MISSING = "no-such-org/no-such-model"


def product_classes(package: Any, base: type) -> set[type]:
    """Every leaf subclass of ``base`` defined in ``package``'s modules (shared bases left out)."""
    found: set[type] = set()
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, base) and cls.__module__ == module.__name__ and not inspect.isabstract(cls):
                found.add(cls)
    return {cls for cls in found if not any(other is not cls and issubclass(other, cls) for other in found)}


def _hf(dirs: dict[str, Path], server: OpenAITestServer) -> VLMServing:
    return LocalModelVLMServing_hf(str(dirs["qwen"]), device="cpu", max_tokens=4)


def _vllm(dirs: dict[str, Path], server: OpenAITestServer) -> VLMServing:
    return LocalModelVLMServing_vllm(
        str(dirs["qwen"]), vllm_dtype="float32", vllm_max_model_len=2048, vllm_enforce_eager=True, vllm_max_tokens=4
    )


def _api(dirs: dict[str, Path], server: OpenAITestServer) -> VLMServing:
    return APIVLMServing_openai(server.base_url, "test-model", api_key_env=None, max_retries=0, timeout=10)


# class -> how to build it; the scorers take a name that does not exist, so the tiny fallback loads.
CASES: dict[type, Callable[[dict[str, Path], OpenAITestServer], Any]] = {
    LocalModelVLMServing_hf: _hf,
    LocalModelVLMServing_vllm: _vllm,
    APIVLMServing_openai: _api,
    AutoTextSimilarity: lambda d, s: AutoTextSimilarity(MISSING, device="cpu", allow_tiny_fallback=True),
    ClipTextSimilarity: lambda d, s: ClipTextSimilarity(MISSING, device="cpu", allow_tiny_fallback=True),
    SentenceTransformerSimilarity: lambda d, s: SentenceTransformerSimilarity(d["minilm"], device="cpu"),
    BlipITMScorer: lambda d, s: BlipITMScorer(MISSING, device="cpu", allow_tiny_fallback=True),
    ClipImageSimilarity: lambda d, s: ClipImageSimilarity(MISSING, device="cpu", allow_tiny_fallback=True),
    OwlDetector: lambda d, s: OwlDetector(MISSING, device="cpu", allow_tiny_fallback=True),
}


def test_every_serving_and_scorer_class_has_a_case() -> None:
    classes = product_classes(dataflow_mm.serving, VLMServing) | product_classes(dataflow_mm.scoring, LazyScorer)
    assert classes - set(CASES) == set()


def _load(obj: Any) -> None:
    """Load the model the way a run does: scorers ``load()``, servings answer one request."""
    if isinstance(obj, LazyScorer):
        obj.load()
        assert obj.loaded
    else:
        assert obj.chat([build_conversation("Describe the picture.")])[0].ok


@pytest.mark.parametrize("cls", list(CASES), ids=lambda cls: cls.__name__)
def test_describe_is_the_same_before_and_after_loading(
    cls: type,
    tiny_models_dir: Path,
    tiny_qwen_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if cls is LocalModelVLMServing_vllm and not is_importable("vllm"):
        pytest.skip("vllm is not installed here (its CPU tests run in the vLLM environment)")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # a 1 GiB KV cache on the CPU build
    monkeypatch.setenv(ENV_TINY_DIR, str(tiny_models_dir))  # where the fallback finds the tiny models
    with OpenAITestServer() as server:
        dirs = {"qwen": tiny_qwen_dir}
        if cls is SentenceTransformerSimilarity:  # the real MiniLM is a test dependency of the main env only
            dirs["minilm"] = request.getfixturevalue("minilm_dir")
        obj = CASES[cls](dirs, server)
        before = obj.describe()
        try:
            _load(obj)
            assert obj.describe() == before
            obj.cleanup()
            assert obj.describe() == before
        finally:
            obj.cleanup()


def test_the_fallback_is_in_the_provenance_from_the_start(
    tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_TINY_DIR, str(tiny_models_dir))
    scorer = AutoTextSimilarity(MISSING, device="cpu", allow_tiny_fallback=True)
    assert scorer.describe()["smoke_test_model"] is True and not scorer.loaded
    assert scorer.describe()["scorer"] == "auto"
