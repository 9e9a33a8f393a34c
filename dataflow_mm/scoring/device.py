"""Old import path of ``dataflow_mm.models.device``."""

from dataflow_mm.models.device import AUTO, resolve_device

__all__ = ["AUTO", "resolve_device"]
