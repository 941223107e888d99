"""Mixed traffic: 80 % pulls (manifest then one layer), 20 % pushes of small images."""

from __future__ import annotations

import random
import threading
import time
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


def _pull(conn: Connection, tag: str, layer: str) -> None:
    r = conn.request("GET", f"/v2/{POOL_REPO}/manifests/{tag}", oci.MANIFEST_ACCEPT)
    oci.expect(r, "pull manifest", 200)
    oci.expect(conn.request("GET", f"/v2/{POOL_REPO}/blobs/{layer}"), "pull layer", 200)


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
    totals: dict[str, Any] = {"pull": [], "push": [], "errors": 0, "first_error": ""}

    def client(index: int) -> None:
        rng = random.Random(process * 1000 + index)
        lat: dict[str, list[float]] = {"pull": [], "push": []}
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
                        _pull(conn, *rng.choice(pool))
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
            totals["pull"].extend(lat["pull"])
            totals["push"].extend(lat["push"])
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
    procs = max(1, settings.loadgen_processes)
    clients, seconds = settings.mixed_clients, settings.mixed_seconds
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start_at = time.time() + START_DELAY_S
    argsets = [
        (server.host, server.port, pool, p, n, start_at, seconds, server.credentials)
        for p, n in enumerate(shares)
    ]
    parts = run_in_processes(_mixed_job, argsets)
    pulls = [v for p in parts for v in p["pull"]]
    pushes = [v for p in parts for v in p["push"]]
    ops = len(pulls) + len(pushes)
    cpu = sum(p["cpu"] for p in parts)
    return {
        "clients": clients,
        "seconds": seconds,
        "ops": ops,
        "ops_s": rate(ops, seconds),
        "pulls": len(pulls),
        "pushes": len(pushes),
        "errors": sum(p["errors"] for p in parts),
        "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
        "pull_p50_ms": ms(percentile(pulls, 50)),
        "pull_p99_ms": ms(percentile(pulls, 99)),
        "push_p50_ms": ms(percentile(pushes, 50)),
        "push_p99_ms": ms(percentile(pushes, 99)),
        "client_cpu_s": round(cpu, 3),
        "client_cpu_pct_of_one_core": round(100 * cpu / seconds, 1),
    }
