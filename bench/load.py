"""Other load on the machine: the benchmark shares its cores with whatever else runs.

``/proc/stat`` gives the CPU time the whole machine spent busy; minus what the measured command,
its children and the PostgreSQL server used, that is load from other processes, which slows the
measured command down. Before each timed step the benchmark waits (bounded) for a quiet moment.
"""

from __future__ import annotations

import os
import time

_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def busy_cores(seconds: float = 1.0) -> float:
    """Average number of busy cores over the next ``seconds``."""
    b0, t0 = machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return (machine_busy_seconds() - b0) / (time.monotonic() - t0)


def wait_for_quiet(max_seconds: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait until fewer than ``threshold`` cores are busy (sampled each second), at most
    ``max_seconds``. Returns (seconds waited, busy cores in the last sample)."""
    t0 = time.monotonic()
    while True:
        busy = busy_cores(1.0)
        waited = time.monotonic() - t0
        if busy < threshold or waited >= max_seconds:
            return waited, busy
