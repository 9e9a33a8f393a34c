"""Model names and folders resolve to a local folder, or fail with a message that says what to do."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from dataflow_mm.common.errors import ModelNotAvailableError, UserError
from dataflow_mm.models.resolver import resolve_model_path

REPO_ID = "some-org/some-vlm"


def _model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    return folder


def _cached_snapshot(cache: Path, repo_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<commit>/}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return _model_folder(repo / "snapshots" / commit)


class HubSpy:
    """Stands in for ``snapshot_download``: records calls; cache-only lookups miss."""

    def __init__(self, download_to: Path | None = None, fail_with: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.download_to = download_to
        self.fail_with = fail_with

    def __call__(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append({"repo_id": repo_id, **kwargs})
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not in cache")
        if self.fail_with is not None:
            raise self.fail_with
        assert self.download_to is not None
        return str(_model_folder(Path(kwargs.get("local_dir") or self.download_to)))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any attempt to open a network connection is recorded and refused."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))  # type: ignore[arg-type]
    return attempts


def test_local_folder_is_used_as_is(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "my-model")

    assert resolve_model_path(str(folder)) == folder.resolve()


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = _model_folder(tmp_path / "models" / "vlm")

    assert resolve_model_path("~/models/vlm") == folder.resolve()


def test_missing_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="does not exist") as error:
        resolve_model_path(str(tmp_path / "nowhere"))

    assert "--model_path" in str(error.value)
    assert isinstance(error.value, UserError)


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"no config\.json"):
        resolve_model_path(str(tmp_path))


def test_offline_hub_id_not_cached_explains_every_step(tmp_path: Path, no_network: list[Any]) -> None:
    cache = tmp_path / "hf-cache"

    with pytest.raises(ModelNotAvailableError) as error:
        resolve_model_path(REPO_ID, cache_dir=str(cache), local_dir=str(tmp_path / "models"))

    message = str(error.value)
    assert REPO_ID in message
    assert str(tmp_path / "models" / "some-org__some-vlm") in message  # local folder tried
    assert f"Hugging Face cache at {cache}" in message
    assert "offline" in message
    assert "--model_path" in message
    assert no_network == []


def test_offline_never_attempts_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[Any]
) -> None:
    spy = HubSpy(download_to=tmp_path / "downloaded")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)

    with pytest.raises(ModelNotAvailableError):
        resolve_model_path(REPO_ID, cache_dir=str(tmp_path / "cache"))

    assert len(spy.calls) == 1 and spy.calls[0]["local_files_only"] is True
    assert no_network == []


def test_local_dir_copy_is_found_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = HubSpy()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    folder = _model_folder(tmp_path / "models" / "some-org__some-vlm")

    assert resolve_model_path(REPO_ID, local_dir=str(tmp_path / "models")) == folder.resolve()
    assert spy.calls == []


def test_local_dir_with_the_plain_id_layout(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "models" / "some-org" / "some-vlm")

    assert resolve_model_path(REPO_ID, local_dir=str(tmp_path / "models")) == folder.resolve()


def test_cached_snapshot_is_found_offline(tmp_path: Path, no_network: list[Any]) -> None:
    snapshot = _cached_snapshot(tmp_path / "hf-cache", REPO_ID)

    resolved = resolve_model_path(REPO_ID, cache_dir=str(tmp_path / "hf-cache"))

    assert resolved.resolve() == snapshot.resolve()
    assert no_network == []


def test_cache_defaults_to_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snapshot = _cached_snapshot(tmp_path / "hf-home" / "hub", REPO_ID)

    assert resolve_model_path(REPO_ID).resolve() == snapshot.resolve()


def test_online_download_goes_to_local_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    spy = HubSpy(download_to=tmp_path / "unused")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)

    resolved = resolve_model_path(REPO_ID, cache_dir=str(tmp_path / "cache"), local_dir=str(tmp_path / "models"))

    assert resolved == tmp_path / "models" / "some-org__some-vlm"
    assert [c.get("local_files_only", False) for c in spy.calls] == [True, False]


def test_online_download_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    spy = HubSpy(fail_with=ConnectionError("could not resolve huggingface.co"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)

    with pytest.raises(ModelNotAvailableError, match="download failed: ConnectionError: could not resolve"):
        resolve_model_path(REPO_ID, cache_dir=str(tmp_path / "cache"))
