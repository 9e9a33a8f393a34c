"""Flag values that cannot work, refused when the arguments are parsed (before any step or model).

Each pipeline script calls ``check_args`` on its parsed flags; a flag a script does not have is
skipped. All problems are reported at once, in one line, as a ``UserError`` (exit code 2).
"""

from __future__ import annotations

import argparse
import math

from dataflow_mm.common.errors import StorageError, UserError
from dataflow_mm.storage.paths import check_file_name_prefix, unwritable_reason

# flag -> smallest value that works (None values mean "not set" and are left alone)
MINIMUM_INT = {
    "batch_size": 1,
    "max_tokens": 1,
    "chunk_size": 1,
    "max_workers": 1,
    "max_boxes": 1,
    "max_proposals": 1,
    "scoring_batch_size": 1,
    "tensor_parallel_size": 1,
    "max_model_len": 1,
    "ray_actors_per_model_operator": 1,
    "api_max_retries": 0,
    "api_max_consecutive_failures": 0,
}
POSITIVE_FLOAT = ("api_timeout", "api_max_response_mb")
EXTRA_OUTPUT_FLAGS = ("output_image_with_bbox_path",)


def arg_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the parsed flags (empty when they can work)."""
    problems: list[str] = []
    for name, minimum in MINIMUM_INT.items():
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            problems.append(f"--{name} must be at least {minimum} (got {value})")
    for name in POSITIVE_FLOAT:
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            problems.append(f"--{name} must be a number above 0 (got {value})")
    temperature = getattr(args, "temperature", None)
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        problems.append(f"--temperature must be 0 (greedy) or more (got {temperature})")
    unanswered = getattr(args, "api_max_unanswered_s", None)
    if unanswered is not None and not (math.isfinite(unanswered) and unanswered >= 0):
        problems.append(f"--api_max_unanswered_s must be 0 (never stop) or a number of seconds (got {unanswered})")
    top_p = getattr(args, "top_p", None)
    if top_p is not None and not (0 < top_p <= 1):
        problems.append(f"--top_p must be in (0, 1] (got {top_p})")
    prefix = getattr(args, "file_name_prefix", None)
    if prefix is not None:
        try:
            check_file_name_prefix(prefix)
        except StorageError as exc:
            problems.append(f"--file_name_prefix: {exc}")
    for name in EXTRA_OUTPUT_FLAGS:
        path = getattr(args, name, None)
        reason = unwritable_reason(path) if path else None
        if reason:
            problems.append(f"--{name} '{path}' cannot be written: {reason}")
    return problems


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` when every flag can work; otherwise a ``UserError`` naming each problem."""
    problems = arg_problems(args)
    if problems:
        raise UserError("invalid flags: " + "; ".join(problems))
    return args
