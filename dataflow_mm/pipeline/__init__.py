"""Pipelines: compile, run with resume, summarize."""

from dataflow_mm.pipeline.base import PipelineABC
from dataflow_mm.pipeline.summary import RunSummary

__all__ = ["PipelineABC", "RunSummary"]
