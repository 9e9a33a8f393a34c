"""Value checks for configs and operator arguments, run when the object is built.

Each check raises ``ConfigError`` (a ``UserError``: the scripts print one line and exit 2) whose
message names the field and the values it accepts, e.g.
``ExistingBBoxDataGenConfig.jpeg_quality must be an integer from 1 to 100, not 500``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar

from dataflow_mm.common.errors import ConfigError

T = TypeVar("T")


def check_choice(field: str, value: T, allowed: Iterable[Any]) -> T:
    """``value`` when it is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {', '.join(map(str, allowed))}, not {value!r}")
    return value


def check_int(field: str, value: Any, low: int, high: int | None = None, optional: bool = False) -> Any:
    """``value`` when it is an int (not a bool) in ``[low, high]`` (or None when ``optional``)."""
    if value is None and optional:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        none = " (or None)" if optional else ""
        raise ConfigError(f"{field} must be an integer {span}{none}, not {value!r}")
    return value


def check_number(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> Any:
    """``value`` when it is a finite number within the bounds (``low`` excluded when ``low_open``)."""
    if value is None and optional:
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        rule = "".join(f" {b}" for b in [" and ".join(bounds)] if b)
        none = " (or None)" if optional else ""
        raise ConfigError(f"{field} must be a finite number{rule}{none}, not {value!r}")
    return value
