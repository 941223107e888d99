"""Where latency bends: the hot manifest GET and the mixed load at many concurrent clients.

The other workloads run 32 clients; here each load runs at every level of KNEE_CLIENTS,
reporting rate, p50/p99 and errors, and the server's resident memory sampled while it runs
(the peak of all its processes together), so that a server that queues without bound or
falls over shows it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

from bench import loadgen, oci
from bench.servers import Server, process_tree, status_kib
from bench.settings import Settings
from bench.workloads import hot, mixed

SAMPLE_EVERY_S = 0.2


@contextmanager
def rss_sampler(server: Server) -> Iterator[Callable[[], float]]:
    """Sample the server's summed RSS while the block runs; yields a function that answers
    the peak seen (MiB). VmHWM cannot tell: it keeps the peak of the process's whole life."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while True:
            kib = sum(status_kib(pid, "VmRSS") for pid in process_tree(server.proc.pid))
            peak[0] = max(peak[0], kib / 1024)
            if stop.wait(SAMPLE_EVERY_S):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: round(peak[0], 1)
    finally:
        stop.set()
        thread.join()


def _manifest_get(server: Server, settings: Settings, clients: int) -> dict[str, Any]:
    target = f"/v2/{hot.REPO}/manifests/{hot.TAG}"
    headers = {**oci.MANIFEST_ACCEPT, **server.credentials.headers_for(target)}
    # Two wrk threads: one event loop for 256 connections would be the bottleneck.
    result = loadgen.wrk(
        server.host, server.port, target, headers, clients, settings.knee_seconds, threads=2
    )
    return result.as_dict()


def _mixed(
    server: Server, settings: Settings, pool: list[tuple[str, str]], clients: int
) -> dict[str, Any]:
    at = replace(settings, mixed_clients=clients, mixed_seconds=settings.knee_seconds)
    return mixed.run(server, at, pool)


def run(server: Server, settings: Settings, pool: list[tuple[str, str]]) -> dict[str, Any]:
    """`pool` as mixed.prepare made it; the hot image must be pushed (hot.prepare)."""
    out: dict[str, Any] = {"seconds": settings.knee_seconds, "clients": settings.knee_clients}
    for clients in settings.knee_clients:
        loads: dict[str, Callable[[], dict[str, Any]]] = {
            "manifest_get": partial(_manifest_get, server, settings, clients),
            "mixed": partial(_mixed, server, settings, pool, clients),
        }
        for name, load in loads.items():
            with rss_sampler(server) as peak:
                result = load()
            result["server_rss_peak_mib"] = peak()
            out[f"{name}_{clients}"] = result
    return out
