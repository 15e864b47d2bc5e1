"""What the demo needs to know about the machine it runs on: cores, load, CPU model, threads and workers."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from simdinov2.data.samplers import available_cores


def load_average() -> list[float]:
    """os.getloadavg() (1, 5, 15 minutes), rounded; [] where the system does not tell."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """torch threads for a machine with `cores` cores and this 1-minute load average: all of them on an
    idle machine; on a busy one only the cores left free (at least 1). Why: the small matrices of a tiny
    ViT give every op a thread barrier, and one thread descheduled by another process stalls all the
    others; we measured 2 threads several times slower than 1 on 2 cores shared with another job, and
    ~1.35x faster on idle cores. None: this machine's cores and current load."""
    cores = available_cores() if cores is None else cores
    if load is None:
        load = (load_average() or [0.0])[0]
    free = cores - load
    if free >= cores - 0.5:
        return cores
    return max(1, int(free + 0.5))
