"""Garbage collection under load, against a real regd with two workers.

Pushers, pullers and tag deleters run while collections (grace 0, deleting untagged
manifests) run back to back, so every race window is as wide as it gets. Then every
tagged image must pull completely, each blob hashing to its digest. A push may fail with
MANIFEST_BLOB_UNKNOWN when a sweep took its fresh blobs (the pusher then uploads them
again); nothing else may fail.
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

pytestmark = pytest.mark.e2e

DURATION = 8.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPOS = ["stress/a", "stress/b", "stress/c"]
# A small pool of layers shared between images, so blobs are shared across repositories.
SHARED = [os.urandom(2048) for _ in range(6)]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Counts:
    pushes: int = 0
    push_retries: int = 0
    pushes_starved: int = 0
    pulls: int = 0
    pulls_of_deleted_tags: int = 0
    pulls_of_collected_manifests: int = 0
    tag_deletes: int = 0
    gc_runs: int = 0
    gc_blobs: int = 0
    gc_manifests: int = 0
    errors: list[str] = field(default_factory=list)


async def upload(client: httpx.AsyncClient, repo: str, data: bytes) -> None:
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(data)}, content=data)
    r.raise_for_status()


async def pusher(client: httpx.AsyncClient, n: int, counts: Counts, stop: trio.Event) -> None:
    rng = random.Random(n)
    i = 0
    while not stop.is_set():
        i += 1
        repo = rng.choice(REPOS)
        config = json.dumps({"pusher": n, "i": i}).encode()
        layers = [rng.choice(SHARED), os.urandom(1024)]
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
                    {"mediaType": "application/x-layer", "digest": sha(d), "size": len(d)}
                    for d in layers
                ],
            }
        ).encode()
        for _attempt in range(10):
            for blob in (config, *layers):
                await upload(client, repo, blob)
            r = await client.put(
                f"/v2/{repo}/manifests/t{n}-{i % 5}",
                content=manifest,
                headers={"Content-Type": OCI_MANIFEST},
            )
            if r.status_code == 201:
                counts.pushes += 1
                break
            if r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN":
                counts.push_retries += 1
                continue
            counts.errors.append(f"push {repo}: {r.status_code} {r.text[:200]}")
            return
        else:
            # With a zero grace period a sweep may take fresh blobs every time; that is
            # allowed (the push fails cleanly), so it is counted, not an error.
            counts.pushes_starved += 1


@dataclass
class Pull:
    """One pull's outcome: `problem` is None when every part arrived intact."""

    problem: str | None = None
    status: int = 200
    # The manifest's digest once the manifest arrived; None when the tag itself failed.
    digest: str | None = None


async def pull_tag(client: httpx.AsyncClient, repo: str, tag: str) -> Pull:
    """Pull one image completely."""
    r = await client.get(f"/v2/{repo}/manifests/{tag}")
    if r.status_code != 200:
        return Pull(f"manifest {repo}:{tag}: {r.status_code}", r.status_code)
    digest = r.headers["Docker-Content-Digest"]
    if sha(r.content) != digest:
        return Pull(f"manifest {repo}:{tag} does not hash to its digest", 200, digest)
    doc = r.json()
    for desc in [doc["config"], *doc["layers"]]:
        b = await client.get(f"/v2/{repo}/blobs/{desc['digest']}")
        if b.status_code != 200:
            problem = f"blob {desc['digest']} of {repo}:{tag} ({digest}): {b.status_code}"
            return Pull(problem, b.status_code, digest)
        if sha(b.content) != desc["digest"]:
            return Pull(f"blob {desc['digest']} of {repo}:{tag} is corrupt", 200, digest)
    return Pull()


async def puller(client: httpx.AsyncClient, n: int, counts: Counts, stop: trio.Event) -> None:
    rng = random.Random(100 + n)
    while not stop.is_set():
        repo = rng.choice(REPOS)
        r = await client.get(f"/v2/{repo}/tags/list")
        if r.status_code == 404:
            await trio.sleep(0.01)
            continue
        tags = r.json()["tags"]
        if not tags:
            await trio.sleep(0.01)
            continue
        tag = rng.choice(tags)
        pulled = await pull_tag(client, repo, tag)
        counts.pulls += 1
        if pulled.problem is None:
            continue
        # Two failures are the registry keeping its word, every other one is an error
        # (no retry may paper over a short-lived 404 or 5xx): the tag was deleted since
        # the listing, or the tag moved and the collector took the manifest it named
        # together with that manifest's own blobs.
        if pulled.status == 404 and pulled.digest is None:
            counts.pulls_of_deleted_tags += 1
            continue
        if pulled.status == 404 and pulled.digest is not None:
            gone = await client.head(f"/v2/{repo}/manifests/{pulled.digest}")
            if gone.status_code == 404:
                counts.pulls_of_collected_manifests += 1
                continue
        counts.errors.append(pulled.problem)


async def tag_deleter(client: httpx.AsyncClient, counts: Counts, stop: trio.Event) -> None:
    rng = random.Random(7)
    while not stop.is_set():
        await trio.sleep(0.05)
        repo = rng.choice(REPOS)
        r = await client.get(f"/v2/{repo}/tags/list")
        if r.status_code != 200 or not r.json()["tags"]:
            continue
        tag = rng.choice(r.json()["tags"])
        r = await client.delete(f"/v2/{repo}/manifests/{tag}")
        if r.status_code == 202:
            counts.tag_deletes += 1
        elif r.status_code != 404:
            counts.errors.append(f"delete tag: {r.status_code} {r.text[:200]}")


async def collector(client: httpx.AsyncClient, counts: Counts, stop: trio.Event) -> None:
    while not stop.is_set():
        r = await client.post(
            "/admin/v1/gc", json={"grace_seconds": 0, "delete_untagged": True}, timeout=60
        )
        if r.status_code == 409:
            await trio.sleep(0.01)
            continue
        if r.status_code != 200:
            counts.errors.append(f"gc: {r.status_code} {r.text[:300]}")
            return
        totals = r.json()["totals"]
        counts.gc_runs += 1
        counts.gc_blobs += totals["blobs"]
        counts.gc_manifests += totals["manifests"]


async def test_gc_under_load(regd_factory: RegdFactory, database_url: str | None) -> None:
    server = regd_factory(database_url=database_url, workers=2)
    counts = Counts()
    stop = trio.Event()
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(pusher, client, n, counts, stop)
            for n in range(3):
                nursery.start_soon(puller, client, n, counts, stop)
            nursery.start_soon(tag_deleter, client, counts, stop)
            nursery.start_soon(collector, client, counts, stop)
            await trio.sleep(DURATION)
            stop.set()
        # A last collection with nothing else running, then check every tagged image.
        r = await client.post("/admin/v1/gc", json={"grace_seconds": 0, "delete_untagged": True})
        assert r.status_code == 200
        verified = 0
        for repo in REPOS:
            r = await client.get(f"/v2/{repo}/tags/list")
            if r.status_code == 404:
                continue
            for tag in r.json()["tags"]:
                pulled = await pull_tag(client, repo, tag)
                assert pulled.problem is None, pulled.problem
                verified += 1
    print(
        f"\ngc stress ({(database_url and 'postgresql') or 'sqlite'}): {counts} verified={verified}"
    )
    assert counts.errors == []
    assert counts.pushes > 0
    assert counts.gc_runs > 1
    assert counts.gc_blobs > 0
    assert verified > 0
