"""How many worker processes serve when no setting names a number."""

from __future__ import annotations

import math
import os
from pathlib import Path

# The most workers the default gives, however many CPUs there are. Every worker takes its
# turn at the one database writer (SQLite's lock, or PostgreSQL's row locks on the same
# tags), keeps its own caches and connection pool (about 70 MiB resident each) and runs its
# own housekeeping; past eight, a request rate that more processes could still raise is
# rarer than the memory and the write contention they certainly add. More is a choice.
WORKERS_CAP = 8
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_limit(root: Path) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, None when there is none.

    cgroup v2 writes `QUOTA PERIOD` (or `max PERIOD`) in cpu.max; v1 splits them over
    cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us."""
    for quota_file, period_file in (
        (root / "cpu.max", None),
        (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),
    ):
        try:
            text = quota_file.read_text().split()
            if period_file is not None:
                text += period_file.read_text().split()
        except OSError:
            continue
        try:
            quota, period = float(text[0]), float(text[1])
        except (IndexError, ValueError):
            # "max", or a file we cannot read sense from: no limit that we know of.
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (its affinity mask), fewer when a cgroup quota
    allows less time than that: a container given 1.5 CPUs on a 64-core host gets 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def default_workers(storage: str, cpus: int) -> int:
    """`workers` when no setting names it: one per usable CPU up to WORKERS_CAP; one for
    the memory driver, whose blobs live in one process."""
    if storage == "memory":
        return 1
    return max(1, min(cpus, WORKERS_CAP))
