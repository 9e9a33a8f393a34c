"""What the in-process backends (transformers, vLLM) share about their model: one folder, resolved once.

``model_dir`` is resolved on first use (``describe`` or loading, whichever comes first), so both see
the same folder; ``describe`` never raises for a model that cannot be found (``_known_dir``).
"""

from __future__ import annotations

from pathlib import Path

from dataflow_mm.common.errors import ModelNotAvailableError
from dataflow_mm.models.fallback import is_smoke_test_folder
from dataflow_mm.models.resolver import config_sha256, resolve_model_path


class LocalModel:
    """Mixin for a serving that loads ``hf_model_name_or_path`` from a local folder (a hub id or a path)."""

    hf_model_name_or_path: str
    hf_cache_dir: str | None
    hf_local_dir: str | None
    _model_dir: Path | None = None
    _config_sha256: str | None = None

    @property
    def model_id(self) -> str:
        return self.hf_model_name_or_path

    @property
    def model_dir(self) -> Path:
        """The local model folder (resolved, and downloaded if allowed, once, on first use)."""
        if self._model_dir is None:
            self._model_dir = Path(
                resolve_model_path(self.hf_model_name_or_path, cache_dir=self.hf_cache_dir, local_dir=self.hf_local_dir)
            )
        return self._model_dir

    def _known_dir(self) -> Path | None:
        """``model_dir``, or None while the model cannot be found."""
        try:
            return self.model_dir
        except ModelNotAvailableError:
            return None

    @property
    def is_smoke_test_model(self) -> bool:
        """True for a tiny random-weight folder (the resolved one; as given while it cannot be found)."""
        return is_smoke_test_folder(self._known_dir() or Path(self.hf_model_name_or_path).expanduser())

    def config_sha256(self) -> str | None:
        """Hash of the model folder's config files (None while the model cannot be found)."""
        if self._config_sha256 is None:
            folder = self._known_dir()
            if folder is None:
                return None
            self._config_sha256 = config_sha256(folder)
        return self._config_sha256
