"""CPU time and memory of process trees, from /proc."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from loadtest.bench_common import (
    descendants,
    pin,
    proc_cpu,
)


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` figure of /proc/PID/status (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_cpu(roots: Sequence[int]) -> dict[int, float]:
    return {pid: proc_cpu(pid) for root in roots for pid in descendants(root)}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def place(pids: Sequence[int], cpus: frozenset[int] | None) -> None:
    pin(pids, set(cpus) if cpus is not None else os.sched_getaffinity(0))
