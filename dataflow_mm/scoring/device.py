"""Where the scoring models run: CUDA when it is available, else the CPU (one ``device`` argument)."""

from __future__ import annotations

from dataflow_mm.deps import require

AUTO = "auto"


def resolve_device(device: str | None = AUTO) -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; anything else as given."""
    if device is None or str(device).lower() == AUTO:
        torch = require("torch", "scoring")
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)
