"""vLLM's CPU build: ``gpu_memory_utilization`` is the share of the machine's RAM the engine reserves.

The CPU worker refuses to start when ``total RAM x gpu_memory_utilization`` exceeds the memory free at
that moment, so the GPU default (0.9) fails on any machine where something else holds 10% of the RAM.
Without a ``--gpu_memory_utilization`` from the user (and without a KV cache size set another way:
``kv_cache_memory_bytes`` or ``VLLM_CPU_KVCACHE_SPACE``), the engine gets ``CPU_SHARE_OF_FREE`` of the
memory free when it starts, as a share of the total (``cpu_memory_utilization``); the recorded
setting (``describe``) stays the one the user chose, so resuming a run does not depend on free memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

CPU_SHARE_OF_FREE = 0.25  # of the RAM free at engine start: the rest stays for the engine process, images, others
_MIN_SHARE, _MAX_SHARE = 0.01, 0.9
MEMINFO = Path("/proc/meminfo")


def memory_kib(meminfo: Path = MEMINFO) -> tuple[int, int] | None:
    """``(MemTotal, MemAvailable)`` in KiB from ``/proc/meminfo`` (None where it cannot be read)."""
    values: dict[str, int] = {}
    try:
        for line in meminfo.read_text(encoding="ascii", errors="replace").splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if name in ("MemTotal", "MemAvailable") and parts and parts[0].isdigit():
                values[name] = int(parts[0])
    except OSError:
        return None
    if values.get("MemTotal", 0) <= 0 or "MemAvailable" not in values:
        return None
    return values["MemTotal"], values["MemAvailable"]


def cpu_memory_utilization(meminfo: Path = MEMINFO) -> float | None:
    """The share of the total RAM to give the CPU engine: ``CPU_SHARE_OF_FREE`` of what is free, rounded
    down to 0.01 within [0.01, 0.9] (None where the memory cannot be read: vLLM's default stays)."""
    found = memory_kib(meminfo)
    if found is None:
        return None
    total, available = found
    share = math.floor(CPU_SHARE_OF_FREE * available / total * 100) / 100
    return min(_MAX_SHARE, max(_MIN_SHARE, share))


def is_cpu_build(vllm: Any) -> bool:
    """Whether the imported ``vllm`` runs on its CPU platform."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # an older or unusual build: judge by the version tag
        return "cpu" in str(getattr(vllm, "__version__", "")).lower()


def kv_cache_size_given(engine_args: dict[str, Any]) -> bool:
    """The KV cache has a size of its own, so vLLM's CPU worker does not check the memory share."""
    return engine_args.get("kv_cache_memory_bytes") is not None or bool(os.environ.get("VLLM_CPU_KVCACHE_SPACE"))
