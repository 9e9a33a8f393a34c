"""vLLM's CPU build: a default memory share that starts, and a hint that says to lower it (issue 24).

On the CPU build ``--gpu_memory_utilization`` is the share of the machine's RAM the engine reserves;
the GPU default 0.9 fails wherever 10% of the RAM is in use, and the old hint told the user to raise it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow_mm.serving.vllm_cpu_memory import cpu_memory_utilization, kv_cache_size_given, memory_kib
from dataflow_mm.serving.vllm_engine_args import engine_start_hint

# vLLM 0.32's CPU worker (vllm/v1/worker/cpu_worker.py), as it refuses 0.9 on a 23 GiB machine with 16 GiB free.
CPU_REFUSAL = (
    "Available memory on node 0 (16.01/23.45 GiB) on startup is less than desired CPU memory utilization "
    "(0.9, 21.11 GiB). On the CPU backend, the `--gpu-memory-utilization` flag controls the fraction of CPU "
    "memory reserved (despite its name). To resolve: decrease `--gpu-memory-utilization` (e.g. "
    "`--gpu-memory-utilization 0.5`) or reduce CPU memory used by other processes."
)


def _meminfo(tmp_path: Path, total_kib: int, available_kib: int | None) -> Path:
    lines = [f"MemTotal:       {total_kib} kB", "MemFree:         1000 kB"]
    if available_kib is not None:
        lines.append(f"MemAvailable:   {available_kib} kB")
    path = tmp_path / "meminfo"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("total", "available", "share"),
    [(24_000_000, 16_000_000, 0.16), (24_000_000, 24_000_000, 0.25), (24_000_000, 10_000, 0.01)],
)
def test_the_default_is_a_quarter_of_the_free_memory_as_a_share_of_the_total(
    tmp_path: Path, total: int, available: int, share: float
) -> None:
    result = cpu_memory_utilization(_meminfo(tmp_path, total, available))
    assert result == share
    assert result == 0.01 or result * total <= available  # never more than is free (but the floor)


def test_no_default_where_the_memory_cannot_be_read(tmp_path: Path) -> None:
    assert cpu_memory_utilization(tmp_path / "missing") is None
    assert cpu_memory_utilization(_meminfo(tmp_path, 24_000_000, None)) is None
    assert cpu_memory_utilization(_meminfo(tmp_path, 0, 0)) is None


def test_this_machine_reads_and_its_default_would_start_the_cpu_worker() -> None:
    found = memory_kib()
    if found is None:
        pytest.skip("no /proc/meminfo")
    total, available = found
    share = cpu_memory_utilization()
    assert share is not None and 0.01 <= share <= 0.9
    assert share * total <= available  # the CPU worker's start check: total x share within what is free


def test_a_kv_cache_size_of_its_own_keeps_vllms_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert not kv_cache_size_given({}) and kv_cache_size_given({"kv_cache_memory_bytes": 1 << 28})
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert kv_cache_size_given({})


def test_the_cpu_refusal_hint_says_lower_not_raise() -> None:
    for hint in (
        engine_start_hint(ValueError(CPU_REFUSAL), 8192, 0.9),
        engine_start_hint(ValueError("x"), 8192, 0.9, cpu=True),
    ):
        assert "share of the machine's RAM" in hint and "lower it" in hint and "VLLM_CPU_KVCACHE_SPACE" in hint
        assert "raise --gpu_memory_utilization" not in hint
    gpu = engine_start_hint(ValueError("KV cache is too small"), 8192, 0.9)
    assert "raise --gpu_memory_utilization" in gpu  # on a GPU the advice is unchanged
