"""CPU seconds of this process and of its child processes (a vLLM engine's), for the vLLM benchmarks.

When the pipeline's process spends about as many CPU seconds as the run's wall seconds, the engine waits
on that one Python process (its input processing, budget checks, writes), not the other way round.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path


def process_cpu_seconds() -> float:
    """CPU seconds of this process so far, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def descendants_cpu_seconds() -> float | None:
    """CPU seconds of this process's live descendants (the vLLM engine core and its workers), from ``/proc``;
    None where there is no ``/proc``."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        return None
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    mine, found = {os.getpid()}, True
    while found:
        found = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                found = True
    return sum(seconds[pid] for pid in mine if pid != os.getpid())
