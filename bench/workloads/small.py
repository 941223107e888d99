"""Many small images pushed by concurrent clients."""

from __future__ import annotations

from typing import Any

from bench import oci
from bench.httpc import Connection
from bench.pool import run_indexed
from bench.servers import Server
from bench.stats import ms, percentile, rate


def push_small_images(server: Server, count: int, clients: int) -> dict[str, Any]:
    """`count` images (3 distinct 4 KiB layers, a config, a manifest), made before the clock
    starts; each blob goes up as POST then PUT ?digest=, the manifest as one PUT."""
    images = [oci.SmallImage.make(f"small-{server.name}-{i}") for i in range(count)]

    def push(conn: Connection, i: int) -> None:
        oci.push_image(conn, f"small/c{i % clients}", f"v{i}", images[i])

    result = run_indexed(server, count, clients, push)
    return {
        "images": result.done,
        "clients": clients,
        "errors": result.errors,
        "first_error": result.first_error,
        "requests_per_image": 2 * 4 + 1,
        "seconds": round(result.seconds, 3),
        "images_s": rate(result.done, result.seconds),
        "p50_ms": ms(percentile(result.latencies, 50)),
        "p99_ms": ms(percentile(result.latencies, 99)),
    }
