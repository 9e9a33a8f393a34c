"""Old import path of ``dataflow_mm.models.processor_loading``."""

from dataflow_mm.models.processor_loading import image_only_processor_class, load_processor

__all__ = ["image_only_processor_class", "load_processor"]
