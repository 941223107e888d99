"""Cross-repository mounts of one blob into many repositories."""

from __future__ import annotations

import os
import time
from typing import Any

from bench import oci
from bench.servers import Server
from bench.settings import MIB
from bench.stats import ms, percentile, rate

SOURCE = "mount/source"


def run(server: Server, count: int, size_mib: int) -> dict[str, Any]:
    blob = os.urandom(size_mib * MIB)
    with server.connect(timeout=300) as conn:
        digest = oci.push_blob(conn, SOURCE, blob)
        latencies: list[float] = []
        mounted = 0
        start = time.perf_counter()
        for i in range(count):
            t0 = time.perf_counter()
            if oci.mount_blob(conn, f"mount/target-{i}", digest, SOURCE):
                mounted += 1
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    return {
        "blob_mib": size_mib,
        "mounts": count,
        "mounted_201": mounted,
        "errors": count - mounted,
        "seconds": round(elapsed, 3),
        "mounts_s": rate(mounted, elapsed),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
    }
