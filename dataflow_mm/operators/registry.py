"""The operator registry: every operator class the package ships, found in its modules (no hand list).

``dataflowmm list`` prints it, and the HTML report reads the operators' report declarations
(``REPORT``) from it, so a new operator module is listed and reported without editing either.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache

import dataflow_mm.operators as _package
from dataflow_mm.core.operator import OperatorABC


@cache
def operator_classes() -> dict[str, type[OperatorABC]]:
    """Name -> class of every concrete ``OperatorABC`` subclass in ``dataflow_mm.operators`` and its families."""
    found: dict[str, type[OperatorABC]] = {}
    for info in pkgutil.walk_packages(_package.__path__, _package.__name__ + "."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, OperatorABC)
                and cls is not OperatorABC
                and cls.__module__ == module.__name__
                and not inspect.isabstract(cls)
                and not name.startswith("_")
            ):
                found[name] = cls
    return dict(sorted(found.items()))


def summary_line(cls: type) -> str:
    """The first line of a class's docstring ("" without one)."""
    doc = inspect.getdoc(cls) or ""
    return doc.splitlines()[0].strip() if doc else ""
