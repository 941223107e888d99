"""What the machine as a whole was doing: busy CPU from /proc/stat, load average."""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds all cores spent not idle since boot."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def describe() -> dict[str, object]:
    with open("/proc/meminfo") as fh:
        total_kib = int(fh.readline().split()[1])
    return {"cpus": os.cpu_count(), "mem_gib": round(total_kib / 1024 / 1024, 1)}
