"""Where models run: one resolver for every serving and scorer (CUDA when available, else CPU)."""

from __future__ import annotations

from dataflow_mm.common.deps import is_importable, require

AUTO = "auto"


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device (False without torch)."""
    if not is_importable("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str | None = AUTO, extra: str = "scoring") -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; anything else as given.

    ``extra`` names the install extra that brings torch, for the message when it is missing.
    """
    if device is None or str(device).lower() == AUTO:
        torch = require("torch", extra)
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)
