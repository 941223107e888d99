"""Storage-lifecycle benchmark: gc and du at scale, and push latency while gc runs.

    python bench/lifecycle.py [--manifests 10000] [--blobs 50000] [--push-seconds 10]

Setup (not timed) writes the rows straight into a fresh SQLite store and a small file per
blob: `--repositories` repositories, `--manifests` manifests (a config and four layers
each, drawn from a shared pool), 20 % of them untagged, and 10 % of the blobs referenced
by nothing; everything is older than the grace period. Then it times, in-process:
a dry-run gc, a real gc with --delete-untagged, and du. Last it starts `regd serve` on
that data dir and measures small-image push latency (8 clients) for a while without and
then with collections running back to back through the admin API.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from sqlalchemy import insert

from regd.metadata import MetadataStore, sqlite_url
from regd.metadata import schema as t
from regd.oci.digest import Digest
from regd.registry import Policy, Registry
from regd.storage import FilesystemDriver, layout

# Run as a script, bench/ is not on the path as a package; its modules are shared.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.servers import start_regd


def digest_of(i: int, kind: str) -> str:
    return "sha256:" + hashlib.sha256(f"{kind}-{i}".encode()).hexdigest()


def populate(data_dir: Path, repositories: int, manifests: int, blobs: int) -> dict[str, int]:
    store = MetadataStore(sqlite_url(data_dir / "regd.db"))
    store.create_schema()
    old = time.time() - 7 * 86400
    rng = random.Random(1)
    blob_digests = [digest_of(i, "blob") for i in range(blobs)]
    referenced_pool = blob_digests[: int(blobs * 0.9)]
    for d in blob_digests:
        parsed = Digest.parse(d)
        path = data_dir / layout.blob_data(parsed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(d.encode())
    with store.engine.begin() as conn:
        conn.execute(
            insert(t.repositories),
            [
                {"id": r + 1, "name": f"team{r % 10}/app{r}", "created_at": old}
                for r in range(repositories)
            ],
        )
        conn.execute(
            insert(t.blobs),
            [
                {"digest": d, "size": 4096 + i % 1000, "created_at": old, "linked_at": old}
                for i, d in enumerate(blob_digests)
            ],
        )
        links = set()
        manifest_rows, ref_rows, tag_rows = [], [], []
        for m in range(manifests):
            repo = m % repositories + 1
            refs = [referenced_pool[(m * 5 + k) % len(referenced_pool)] for k in range(5)]
            if m % 7 == 0:
                refs[1] = rng.choice(referenced_pool)
            manifest_rows.append(
                {
                    "id": m + 1,
                    "repository_id": repo,
                    "digest": digest_of(m, "manifest"),
                    "media_type": "application/vnd.oci.image.manifest.v1+json",
                    "artifact_type": "application/vnd.oci.image.config.v1+json",
                    "size": 900,
                    "payload": b"{}",
                    "subject": None,
                    "annotations": None,
                    "created_at": old,
                }
            )
            for d in dict.fromkeys(refs):
                ref_rows.append({"manifest_id": m + 1, "digest": d})
                links.add((repo, d))
            if m % 5 != 0:
                tag_rows.append(
                    {
                        "repository_id": repo,
                        "name": f"t{m}",
                        "manifest_id": m + 1,
                        "updated_at": old,
                    }
                )
        conn.execute(insert(t.manifests), manifest_rows)
        conn.execute(insert(t.manifest_blobs), ref_rows)
        conn.execute(insert(t.tags), tag_rows)
        for d in blob_digests[int(blobs * 0.9) :]:
            links.add((rng.randrange(repositories) + 1, d))
        conn.execute(
            insert(t.repository_blobs),
            [{"repository_id": r, "digest": d, "created_at": old} for r, d in links],
        )
    store.engine.dispose()
    return {"repositories": repositories, "manifests": manifests, "blobs": blobs}


async def timed_operations(data_dir: Path) -> dict[str, Any]:
    store = MetadataStore(sqlite_url(data_dir / "regd.db"))
    reg = Registry.create(FilesystemDriver(data_dir), store)
    out: dict[str, Any] = {}
    started = time.perf_counter()
    usage = await reg.lifecycle.usage()
    out["du_s"] = round(time.perf_counter() - started, 3)
    out["du_reclaimable_bytes"] = usage["reclaimable_bytes"]
    started = time.perf_counter()
    plan = await reg.lifecycle.collect(Policy(delete_untagged=True), dry_run=True)
    out["gc_dry_run_s"] = round(time.perf_counter() - started, 3)
    out["gc_dry_run_plan"] = plan.to_json()["totals"]
    started = time.perf_counter()
    plan = await reg.lifecycle.collect(Policy(delete_untagged=True), dry_run=False)
    out["gc_s"] = round(time.perf_counter() - started, 3)
    out["gc_result"] = plan.to_json()["totals"]
    started = time.perf_counter()
    plan = await reg.lifecycle.collect(Policy(delete_untagged=True), dry_run=False)
    out["gc_nothing_to_do_s"] = round(time.perf_counter() - started, 3)
    await reg.aclose()
    return out


def push_latencies(base: str, seconds: float, clients: int = 8) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(n: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                config = json.dumps({"n": n, "i": i, "t": time.time()}).encode()
                layer = os.urandom(4096)
                started = time.perf_counter()
                for blob in (config, layer):
                    d = "sha256:" + hashlib.sha256(blob).hexdigest()
                    client.post(
                        "/v2/bench/push/blobs/uploads/", params={"digest": d}, content=blob
                    ).raise_for_status()
                manifest = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {
                            "mediaType": "application/x",
                            "size": len(config),
                            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                        },
                        "layers": [
                            {
                                "mediaType": "application/x",
                                "size": len(layer),
                                "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                            }
                        ],
                    }
                ).encode()
                client.put(
                    f"/v2/bench/push/manifests/p{n}-{i}",
                    content=manifest,
                    headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                ).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "pushes": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 1),
    }


def latency_under_gc(data_dir: Path, seconds: float) -> dict[str, Any]:
    server = start_regd(1, data_dir=data_dir)
    base = f"http://{server.host}:{server.port}"
    try:
        quiet = summary(push_latencies(base, seconds))
        stop = threading.Event()
        runs = []

        def collector() -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                while not stop.is_set():
                    r = client.post("/admin/v1/gc", json={"delete_untagged": True})
                    runs.append(r.json().get("seconds", 0))

        th = threading.Thread(target=collector)
        th.start()
        busy = summary(push_latencies(base, seconds))
        stop.set()
        th.join()
        return {
            "without_gc": quiet,
            "with_gc": busy,
            "gc_runs_meanwhile": len(runs),
            "gc_run_s_mean": round(statistics.mean(runs), 3) if runs else None,
            "p99_ratio": round(busy["p99_ms"] / quiet["p99_ms"], 2),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=50_000)
    parser.add_argument("--push-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="regd-lifecycle-") as tmp:
        data_dir = Path(tmp)
        started = time.perf_counter()
        result: dict[str, Any] = {
            "store": populate(data_dir, args.repositories, args.manifests, args.blobs)
        }
        result["setup_s"] = round(time.perf_counter() - started, 1)
        result.update(trio.run(timed_operations, data_dir))
        result["push_latency"] = latency_under_gc(data_dir, args.push_seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
