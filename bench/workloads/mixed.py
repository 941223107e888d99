"""Mixed traffic: 80 % pulls (manifest then one layer), 20 % pushes of small images."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

from bench import oci
from bench.auth import NO_AUTH, Credentials, TokenCache
from bench.httpc import Connection
from bench.loadgen import START_DELAY_S, run_in_processes, self_cpu, wait_until
from bench.servers import Server
from bench.settings import Settings
from bench.stats import ms, percentile, rate

POOL_REPO = "mixed/pool"
PULL_SHARE = 0.8


def prepare(server: Server, size: int) -> list[tuple[str, str]]:
    """Push the images pulls choose from; answers (tag, layer digest) pairs."""
    pool = []
    with server.connect() as conn:
        for i in range(size):
            image = oci.SmallImage.make(f"pool-{i}")
            oci.push_image(conn, POOL_REPO, f"p{i}", image)
            pool.append((f"p{i}", image.layer_digests[i % 3]))
    return pool


# What each latency list times: a whole pull, its two requests apart, a whole push.
OPERATIONS = ("pull", "manifest_get", "layer_get", "push")


def _pull(conn: Connection, tag: str, layer: str, lat: dict[str, list[float]]) -> None:
    t0 = time.perf_counter()
    r = conn.request("GET", f"/v2/{POOL_REPO}/manifests/{tag}", oci.MANIFEST_ACCEPT)
    oci.expect(r, "pull manifest", 200)
    t1 = time.perf_counter()
    oci.expect(conn.request("GET", f"/v2/{POOL_REPO}/blobs/{layer}"), "pull layer", 200)
    lat["manifest_get"].append(t1 - t0)
    lat["layer_get"].append(time.perf_counter() - t1)


def _mixed_job(
    host: str,
    port: int,
    pool: list[tuple[str, str]],
    process: int,
    threads: int,
    start_at: float,
    seconds: float,
    credentials: Credentials = NO_AUTH,
) -> dict[str, Any]:
    end_at = start_at + seconds
    lock = threading.Lock()
    totals: dict[str, Any] = {op: [] for op in OPERATIONS}
    totals.update(errors=0, first_error="")

    def client(index: int) -> None:
        rng = random.Random(process * 1000 + index)
        lat: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        errors, first, n = 0, "", 0
        repo = f"mixed/w{process}-{index}"
        authorize = None if credentials.mode == "none" else TokenCache(credentials).headers_for
        with Connection(host, port, timeout=30, authorize=authorize) as conn:
            conn.request("GET", "/v2/")
            # Tokens for both repositories before the clock starts, as for the other loads.
            conn.request("HEAD", f"/v2/{POOL_REPO}/manifests/warm-up")
            conn.request("HEAD", f"/v2/{repo}/manifests/warm-up")
            wait_until(start_at)
            while time.time() < end_at:
                kind = "pull" if rng.random() < PULL_SHARE else "push"
                t0 = time.perf_counter()
                try:
                    if kind == "pull":
                        _pull(conn, *rng.choice(pool), lat)
                    else:
                        n += 1
                        image = oci.SmallImage.make(f"{repo}-{n}")
                        oci.push_image(conn, repo, f"i{n}", image)
                except Exception as exc:
                    errors += 1
                    first = first or repr(exc)[:300]
                    conn.close()
                else:
                    lat[kind].append(time.perf_counter() - t0)
        with lock:
            for op in OPERATIONS:
                totals[op].extend(lat[op])
            totals["errors"] += errors
            totals["first_error"] = totals["first_error"] or first

    cpu0 = self_cpu()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    totals["cpu"] = self_cpu() - cpu0
    return totals


def run(server: Server, settings: Settings, pool: list[tuple[str, str]]) -> dict[str, Any]:
    return run_over([server], settings, pool, settings.loadgen_processes)


def run_over(
    servers: Sequence[Server],
    settings: Settings,
    pool: list[tuple[str, str]],
    processes: int,
    start_at: float | None = None,
) -> dict[str, Any]:
    """The mixed load from `processes` generator processes, process p sending all its
    clients' requests to servers[p % len(servers)]: with several replicas of one registry,
    the clients are spread over them as a connection-level balancer would. The clients
    start at `start_at` on the wall clock (default: in START_DELAY_S), so that a caller
    can measure the servers over exactly the load's seconds."""
    procs = max(1, processes)
    clients, seconds = settings.mixed_clients, settings.mixed_seconds
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    if start_at is None:
        start_at = time.time() + START_DELAY_S
    targets = [servers[p % len(servers)] for p in range(procs)]
    argsets = [
        (srv.host, srv.port, pool, p, n, start_at, seconds, srv.credentials)
        for p, (srv, n) in enumerate(zip(targets, shares, strict=True))
    ]
    parts = run_in_processes(_mixed_job, argsets)
    lat = {op: [v for p in parts for v in p[op]] for op in OPERATIONS}
    ops = len(lat["pull"]) + len(lat["push"])
    cpu = sum(p["cpu"] for p in parts)
    out: dict[str, Any] = {
        "clients": clients,
        "seconds": seconds,
        "ops": ops,
        "ops_s": rate(ops, seconds),
        "pulls": len(lat["pull"]),
        "pushes": len(lat["push"]),
        "errors": sum(p["errors"] for p in parts),
        "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
    }
    for op in OPERATIONS:
        out[f"{op}_p50_ms"] = ms(percentile(lat[op], 50))
        out[f"{op}_p99_ms"] = ms(percentile(lat[op], 99))
    out["client_cpu_s"] = round(cpu, 3)
    out["client_cpu_pct_of_one_core"] = round(100 * cpu / seconds, 1)
    return out
