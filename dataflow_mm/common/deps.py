"""Optional dependencies: imported lazily, with the exact install line when missing."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from dataflow_mm.common.errors import MissingDependencyError


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the pip command that fixes it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = package or module.split(".")[0]
        raise MissingDependencyError(
            f"'{module}' is needed here but is not importable ({exc}). "
            f"Install it with: pip install 'dataflow-mm[{extra}]'  (or: pip install {pkg})"
        ) from exc


def is_importable(module: str) -> bool:
    """True when ``module`` can be imported (without keeping the import error)."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def check_available(module: str, extra: str, package: str | None = None) -> None:
    """Raise MissingDependencyError (as ``require``) when ``module`` is not installed, without importing it."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        pkg = package or module.split(".")[0]
        raise MissingDependencyError(
            f"'{module}' is needed by this pipeline but is not installed. "
            f"Install it with: pip install 'dataflow-mm[{extra}]'  (or: pip install {pkg})"
        )
