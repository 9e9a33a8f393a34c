"""What every scorer shares: model folder resolution (with the tiny offline fallback) and call counts."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataflow_mm.common.deps import require
from dataflow_mm.common.errors import ConfigError, ModelNotAvailableError
from dataflow_mm.common.logger import get_logger
from dataflow_mm.models.device import resolve_device
from dataflow_mm.models.fallback import is_smoke_test_folder, resolve_or_tiny

log = get_logger("scoring")


@dataclass
class ScorerStats:
    """Model calls (forward passes) and items scored since the scorer was built."""

    calls: int = 0
    items: int = 0
    loads: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "items": self.items, "loads": self.loads}


def resolve_scorer_model(
    name_or_path: str | Path,
    tiny_kind: str | None = None,
    allow_tiny_fallback: bool = False,
    cache_dir: str | None = None,
    local_dir: str | None = None,
) -> Path:
    """The local folder of a scoring model; a tiny random-weight ``tiny_kind`` model when unavailable and allowed."""
    return resolve_or_tiny(
        name_or_path,
        tiny_kind,
        allow_tiny_fallback,
        cache_dir=cache_dir,
        local_dir=local_dir,
        meaningless="its SCORES ARE MEANINGLESS, keep/drop decisions are smoke-test output only",
    )


def batches(items: list[Any], size: int) -> list[list[Any]]:
    """``items`` cut into consecutive lists of at most ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


class LazyScorer:
    """The state every scorer shares: the model setting, device, batch size, call counts and a lazy model.

    A subclass names itself (``kind``, under ``describe_key`` in ``describe()``), may add settings
    that change its scores (``_settings``) and loads its model in ``_load``.
    """

    tiny_kind: str | None = None  # the tiny model that stands in under ``allow_tiny_fallback``
    default_model: str | None = None  # the model when none is given
    default_batch_size = 32
    describe_key = "scorer"  # describe()'s first key ("detector" for detectors)...
    kind = "scorer"  # ...and its value: read from the class, so loading never changes it

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        allow_tiny_fallback: bool = False,
        hf_cache_dir: str | None = None,
        hf_local_dir: str | None = None,
    ) -> None:
        model = self.default_model if model_name_or_path is None else model_name_or_path
        if model is None:
            raise ConfigError(f"{type(self).__name__} needs a model (a hub id or a local folder)")
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, not {batch_size!r}")
        self.model_name_or_path = str(model)
        self.device = device  # the setting ("auto", "cpu", "cuda:1"...)
        self.device_in_use: str | None = None  # what it resolved to when the model loaded
        self.batch_size = batch_size
        self.allow_tiny_fallback = allow_tiny_fallback
        self.hf_cache_dir = hf_cache_dir
        self.hf_local_dir = hf_local_dir
        self.stats = ScorerStats()
        self._folder: Path | None = None
        self._model: Any = None
        self._processor: Any = None

    def describe(self) -> dict[str, Any]:
        """What decides the scores (it feeds the resume fingerprint); fixed at construction."""
        return {
            self.describe_key: type(self).kind,
            "model": self.model_name_or_path,
            "device": self.device,
            **self._settings(),
            "smoke_test_model": self.is_smoke_test_model,
        }

    def _settings(self) -> dict[str, Any]:
        """The subclass's own settings that change its scores, for ``describe`` (none by default)."""
        return {}

    def load(self) -> None:
        """Resolve the folder and load the model once (no-op when loaded)."""
        if self._model is not None:
            return
        self.device_in_use = resolve_device(self.device)
        folder = self.folder
        self._load(folder)
        log.info(f"loaded {self.kind} {self.model_name_or_path} from {folder} on {self.device_in_use}")
        self.stats.loads += 1

    def _load(self, folder: Path) -> None:
        """Load ``self._model`` (and what it needs, e.g. ``self._processor``) from ``folder`` onto ``device_in_use``."""
        raise NotImplementedError

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def folder(self) -> Path:
        """The model folder (tiny fallback applied), resolved once: ``describe`` and ``load`` see the same one."""
        if self._folder is None:
            self._folder = resolve_scorer_model(
                self.model_name_or_path, self.tiny_kind, self.allow_tiny_fallback, self.hf_cache_dir, self.hf_local_dir
            )
        return self._folder

    @property
    def is_smoke_test_model(self) -> bool:
        """True for a tiny random-weight folder (the resolved one; as given while it cannot be found)."""
        try:
            folder = self.folder
        except ModelNotAvailableError:
            folder = Path(self.model_name_or_path).expanduser()
        return is_smoke_test_folder(folder)

    def cleanup(self) -> None:
        """Release the model (and what ``_release`` names); the next call loads it again."""
        if self._model is None:
            return
        self._model = None
        self._release()
        gc.collect()
        torch = require("torch", "scoring")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _release(self) -> None:
        """Drop what loading kept besides ``_model`` (a processor by default)."""
        self._processor = None
