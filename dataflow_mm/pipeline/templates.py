"""The shipped pipeline scripts and demo data: where they are, and importing a script as a module.

They ship inside the wheel under ``dataflow_mm/_templates`` (see pyproject's force-include); in a
source checkout they are the repository's ``gpu_pipelines/`` and ``data/``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

TEMPLATE_DIRS = ("gpu_pipelines", "data")


def template_root() -> Path:
    """Folder holding ``gpu_pipelines/`` and ``data/``: packaged templates first, else the source checkout."""
    package = Path(__file__).resolve().parent.parent  # dataflow_mm/
    for candidate in (package / "_templates", package.parent):
        if all((candidate / name).is_dir() for name in TEMPLATE_DIRS):
            return candidate
    raise FileNotFoundError(f"dataflow-mm templates not found under {package} (broken installation?)")


def load_pipeline_script(name: str, module_name: str | None = None) -> ModuleType:
    """Import ``gpu_pipelines/<name>.py`` (its pipeline class, ``parse_args``, ``main``) without running it.

    For subclassing a shipped pipeline, or calling it from Python, without copying the script.
    """
    path = template_root() / "gpu_pipelines" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name or name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no pipeline script at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
