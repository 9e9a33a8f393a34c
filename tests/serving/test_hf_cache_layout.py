"""A model in the real Hugging Face cache is found with the pipeline scripts' default flags,
with HF_HOME and with HF_HUB_CACHE. The cache is laid out as huggingface_hub lays it out
(``repo_folder_name``, blobs, snapshot symlinks, ``refs/main``) and checked with its own
``scan_cache_dir`` / ``try_to_load_from_cache`` before the resolver sees it. Offline."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.file_download import repo_folder_name

from dataflow_mm.common.errors import ModelNotAvailableError
from dataflow_mm.models.resolver import MODEL_FILE_PATTERNS, resolve_model_path
from dataflow_mm.pipeline.script import add_serving_args

REPO_ID = "some-org/tiny-vlm"
COMMIT = "aaaabbbbccccddddeeeeffff0000111122223333"


def build_hub_cache(hub_cache: Path, repo_id: str = REPO_ID, commit: str = COMMIT) -> Path:
    """The snapshot folder of ``repo_id`` in ``hub_cache``, as ``hf download`` leaves it."""
    storage = hub_cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    for name, data in {"config.json": b'{"model_type": "qwen2_5_vl"}', "model.safetensors": b"\0" * 64}.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    scanned = huggingface_hub.scan_cache_dir(hub_cache)
    assert [r.repo_id for r in scanned.repos] == [repo_id] and not scanned.warnings
    assert huggingface_hub.try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache) == str(
        snapshot / "config.json"
    )
    return snapshot


RESOLVE_WITH_DEFAULT_FLAGS = """
import argparse, sys
from dataflow_mm.pipeline.script import add_serving_args
from dataflow_mm.models.resolver import resolve_model_path
parser = argparse.ArgumentParser()
add_serving_args(parser, default_model=sys.argv[1])
args = parser.parse_args([])
print(resolve_model_path(args.model_path, cache_dir=args.hf_cache_dir, local_dir=args.download_dir))
"""


def resolve_in_fresh_process(tmp_path: Path, **env: str) -> str:
    """Resolve with the scripts' default flags in a new interpreter (huggingface_hub reads env at import)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME")}
    clean.update({"HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", **env})
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE_WITH_DEFAULT_FLAGS, REPO_ID],
        capture_output=True,
        text=True,
        env=clean,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_found_in_the_default_cache_with_default_flags(tmp_path: Path) -> None:
    snapshot = build_hub_cache(tmp_path / "home" / ".cache" / "huggingface" / "hub")
    assert resolve_in_fresh_process(tmp_path) == str(snapshot.resolve())


def test_found_under_hf_home(tmp_path: Path) -> None:
    snapshot = build_hub_cache(tmp_path / "hf-home" / "hub")
    assert resolve_in_fresh_process(tmp_path, HF_HOME=str(tmp_path / "hf-home")) == str(snapshot.resolve())


def test_found_in_hf_hub_cache(tmp_path: Path) -> None:
    snapshot = build_hub_cache(tmp_path / "elsewhere")
    got = resolve_in_fresh_process(tmp_path, HF_HOME=str(tmp_path / "unused"), HF_HUB_CACHE=str(tmp_path / "elsewhere"))
    assert got == str(snapshot.resolve())


def test_default_flag_leaves_the_cache_to_the_hub() -> None:
    parser = argparse.ArgumentParser()
    add_serving_args(parser, default_model=REPO_ID)
    assert parser.parse_args([]).hf_cache_dir is None


def test_revision_picks_the_snapshot_and_names_it_in_the_fix_hint(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    build_hub_cache(hub)
    assert resolve_model_path(REPO_ID, cache_dir=str(hub), revision=COMMIT).name == COMMIT
    with pytest.raises(ModelNotAvailableError) as error:
        resolve_model_path(REPO_ID, cache_dir=str(hub), revision="v9")
    assert f"`hf download {REPO_ID} --revision v9 --local-dir <folder>`" in str(error.value)


def test_download_passes_revision_and_only_model_file_patterns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls: list[dict] = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        folder = Path(str(kwargs["local_dir"]))
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "x"}))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    resolve_model_path(REPO_ID, cache_dir=str(tmp_path / "c"), local_dir=str(tmp_path / "m"), revision="v1.0")
    download = calls[-1]
    assert download["revision"] == "v1.0" and calls[0]["revision"] == "v1.0"
    assert download["allow_patterns"] == list(MODEL_FILE_PATTERNS)
    assert {"*.safetensors", "*.json"} <= set(download["allow_patterns"])
