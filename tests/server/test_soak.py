"""Soak: 32 well-behaved clients push, pull, delete and collect garbage while 500 slow
clients hold connections, against a real regd process.

No well-behaved request may get a 5xx, every acknowledged push must pull back unless it
was deleted, and memory must come back once the slow clients leave. It runs for
REGD_SOAK_SECONDS (30 by default, so the whole test stays near a minute in CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field

import httpx
import pytest
import trio

from tests.conftest import RegdFactory
from tests.server.slow_clients import (
    SlowClients,
    open_sockets,
    raise_own_open_file_limit,
    rss_kib,
    upload_sessions,
    wait_until,
)
from tests.server.test_limits import BURST_RELEASED, settled_rss

pytestmark = pytest.mark.e2e

SECONDS = float(os.environ.get("REGD_SOAK_SECONDS", "30"))
CLIENTS = 32
SLOW_BODIES = 400
SLOW_HEADS = 100
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Figures:
    requests: int = 0
    pushes: int = 0
    pulls: int = 0
    deletes: int = 0
    gc_runs: int = 0
    push_retries: int = 0
    errors: list[str] = field(default_factory=list)
    # (repo, tag) -> manifest digest, for every acknowledged push not deleted since.
    acknowledged: dict[tuple[str, str], str] = field(default_factory=dict)


class Client:
    def __init__(self, http: httpx.AsyncClient, figures: Figures) -> None:
        self.http = http
        self.figures = figures

    async def request(self, method: str, url: str, **kwargs: object) -> httpx.Response | None:
        self.figures.requests += 1
        try:
            r = await self.http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.figures.errors.append(f"{method} {url}: {exc!r}")
            return None
        if r.status_code >= 500:
            self.figures.errors.append(f"{method} {url}: {r.status_code} {r.text[:200]}")
            return None
        return r

    async def push(self, repo: str, tag: str, rng: random.Random) -> None:
        config = json.dumps({"tag": tag, "r": rng.random()}).encode()
        layer = rng.randbytes(rng.choice([512, 4096, 200_000]))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/x-config",
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": "application/x-layer", "digest": sha(layer), "size": len(layer)}
                ],
            }
        ).encode()
        for _ in range(5):
            for blob in (config, layer):
                r = await self.request(
                    "POST",
                    f"/v2/{repo}/blobs/uploads/",
                    params={"digest": sha(blob)},
                    content=blob,
                )
                if r is None:
                    return
                if r.status_code != 201:
                    self.figures.errors.append(f"blob push {repo}: {r.status_code}")
                    return
            r = await self.request(
                "PUT",
                f"/v2/{repo}/manifests/{tag}",
                content=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            if r is None:
                return
            if r.status_code == 201:
                self.figures.pushes += 1
                self.figures.acknowledged[(repo, tag)] = sha(manifest)
                return
            # A collection with no grace period may take blobs before the manifest lands.
            if r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN":
                self.figures.push_retries += 1
                continue
            self.figures.errors.append(f"manifest push {repo}:{tag}: {r.status_code}")
            return

    async def pull(self, repo: str, tag: str, digest: str) -> str | None:
        r = await self.request("GET", f"/v2/{repo}/manifests/{digest}")
        if r is None or r.status_code != 200 or sha(r.content) != digest:
            return f"manifest {repo}:{tag} {digest}: {r and r.status_code}"
        for desc in [r.json()["config"], *r.json()["layers"]]:
            b = await self.request("GET", f"/v2/{repo}/blobs/{desc['digest']}")
            if b is None or b.status_code != 200 or sha(b.content) != desc["digest"]:
                return f"blob {desc['digest']} of {repo}:{tag}: {b and b.status_code}"
        return None


async def worker(client: Client, n: int, stop: trio.Event) -> None:
    rng = random.Random(n)
    figures = client.figures
    i = 0
    while not stop.is_set():
        i += 1
        repo = f"soak/r{n % 4}"
        mine = [key for key in figures.acknowledged if key[1].startswith(f"c{n}-")]
        op = rng.random()
        if op < 0.4 or not mine:
            await client.push(repo, f"c{n}-{i}", rng)
        elif op < 0.85:
            key = rng.choice(mine)
            problem = await client.pull(*key, figures.acknowledged[key])
            figures.pulls += 1
            if problem is not None:
                figures.errors.append(problem)
        else:
            key = rng.choice(mine)
            digest = figures.acknowledged.pop(key)
            r = await client.request("DELETE", f"/v2/{key[0]}/manifests/{digest}")
            if r is not None and r.status_code != 202:
                figures.errors.append(f"delete {key}: {r.status_code}")
            figures.deletes += 1


async def collector(client: Client, stop: trio.Event) -> None:
    while not stop.is_set():
        await trio.sleep(1)
        r = await client.request("POST", "/admin/v1/gc", json={"grace_seconds": 0}, timeout=120)
        if r is not None and r.status_code == 200:
            client.figures.gc_runs += 1
        elif r is not None and r.status_code != 409:
            client.figures.errors.append(f"gc: {r.status_code} {r.text[:200]}")


async def trickle(slow: SlowClients, stop: trio.Event) -> None:
    while not stop.is_set():
        slow.trickle()
        await trio.sleep(1)


async def test_soak(regd_factory: RegdFactory) -> None:
    raise_own_open_file_limit(4 * (SLOW_BODIES + SLOW_HEADS) + 1024)
    server = regd_factory(
        log_level="info", extra_args=["--header-timeout", "1h", "--body-timeout", "1h"]
    )
    assert server.process is not None
    pid = server.process.pid
    cold = rss_kib(pid)
    # The baseline: regd after start-up and a short round of the same mixed load without
    # slow clients, plus as many upload sessions as the slow clients will open, so the
    # pools and the database are at their working size (see test_limits.warm_up). The
    # slow clients must leave nothing beyond it.
    await soak_round(server.url, pid, Figures(), "soak/warm", min(10.0, SECONDS), slow=False)
    upload_sessions(server.url, "soak/warm", SLOW_BODIES)
    wait_until(lambda: open_sockets(pid) < 20, 60, "the warm-up connections closing")
    baseline = settled_rss(pid)

    figures = Figures()
    peak, still_slow = await soak_round(server.url, pid, figures, "soak/slow", SECONDS)
    wait_until(lambda: open_sockets(pid) < 20, 60, "the slow connections closing")
    wait_until(lambda: BURST_RELEASED in server.output(), 60, "the release after the burst")
    final = settled_rss(pid)
    print(
        f"\nsoak {SECONDS:.0f}s: requests={figures.requests} pushes={figures.pushes} "
        f"pulls={figures.pulls} deletes={figures.deletes} gc_runs={figures.gc_runs} "
        f"push_retries={figures.push_retries} errors={len(figures.errors)} "
        f"verified={len(figures.acknowledged)} slow_held_to_the_end={still_slow} rss_kib "
        f"cold={cold} baseline={baseline} peak={peak} final={final}"
    )
    assert figures.errors == []
    assert figures.pushes > 0
    assert figures.gc_runs > 0
    assert final <= baseline * 1.2


async def soak_round(
    url: str, pid: int, figures: Figures, slow_repo: str, seconds: float, *, slow: bool = True
) -> tuple[int, int]:
    """One round of the mixed load (beside the slow clients unless `slow` is false); every
    acknowledged push is pulled back at the end. Returns the peak RSS and the slow clients
    still held."""
    stop = trio.Event()
    slow_clients = SlowClients(url, slow_repo)
    if slow:
        slow_clients.open(SLOW_BODIES, SLOW_HEADS)
    peak = rss_kib(pid)
    still_slow = 0
    limits = httpx.Limits(max_connections=CLIENTS + 1)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            client = Client(http, figures)
            async with trio.open_nursery() as nursery:
                for n in range(CLIENTS):
                    nursery.start_soon(worker, client, n, stop)
                nursery.start_soon(collector, client, stop)
                nursery.start_soon(trickle, slow_clients, stop)
                with trio.move_on_after(seconds):
                    while True:
                        await trio.sleep(1)
                        peak = max(peak, rss_kib(pid))
                stop.set()
            still_slow = slow_clients.trickle()
            slow_clients.close()
            for (repo, tag), digest in sorted(figures.acknowledged.items()):
                problem = await client.pull(repo, tag, digest)
                assert problem is None, problem
    finally:
        slow_clients.close()
    return peak, still_slow
