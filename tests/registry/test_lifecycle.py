"""Garbage collection and disk usage over content pushed through the real API."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from regd.oci.digest import Digest
from regd.registry import Policy, Registry, SweepInProgress
from regd.storage import layout
from tests.helpers.inprocess import digest_of, push_blob, push_image

NOW = Policy(grace_seconds=0)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def blob_file(tmp_path: Path, digest: str) -> Path:
    return tmp_path / "blobs" / layout.blob_data(Digest.parse(digest))


async def manifest_blobs(client: httpx.AsyncClient, repo: str, ref: str) -> list[str]:
    doc = (await client.get(f"/v2/{repo}/manifests/{ref}")).json()
    return [doc["config"]["digest"]] + [layer["digest"] for layer in doc["layers"]]


async def test_unreferenced_blobs_are_collected(
    client: httpx.AsyncClient, registry: Registry, tmp_path: Path
) -> None:
    await push_image(client, "app", "v1", seed="kept")
    loose = await push_blob(client, "app", b"nobody references me")
    kept = await manifest_blobs(client, "app", "v1")

    plan = await registry.lifecycle.collect(NOW, dry_run=True)
    assert [b["digest"] for b in plan.blobs] == [loose]
    assert plan.blobs[0]["repositories"] == ["app"]
    assert blob_file(tmp_path, loose).exists()
    assert (await client.head(f"/v2/app/blobs/{loose}")).status_code == 200

    plan = await registry.lifecycle.collect(NOW, dry_run=False)
    assert [b["digest"] for b in plan.blobs] == [loose]
    assert plan.to_json()["totals"]["bytes_freed"] == len(b"nobody references me")
    assert not blob_file(tmp_path, loose).exists()
    assert (await client.head(f"/v2/app/blobs/{loose}")).status_code == 404
    for digest in kept:
        assert blob_file(tmp_path, digest).exists()
        assert (await client.head(f"/v2/app/blobs/{digest}")).status_code == 200
    assert (await registry.lifecycle.collect(NOW, dry_run=False)).blobs == []


async def test_grace_period_protects_fresh_blobs(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await push_blob(client, "app", b"just uploaded")
    plan = await registry.lifecycle.collect(Policy(grace_seconds=3600), dry_run=False)
    assert plan.blobs == []


async def push_signature(
    client: httpx.AsyncClient, repo: str, subject: str, subject_type: str, subject_size: int
) -> str:
    """An untagged signature artifact whose subject is `subject`; its digest."""
    empty = await push_blob(client, repo, b"{}")
    sig = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [],
            "subject": {"mediaType": subject_type, "digest": subject, "size": subject_size},
        }
    ).encode()
    r = await client.put(
        f"/v2/{repo}/manifests/{digest_of(sig)}",
        content=sig,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, r.text
    return digest_of(sig)


async def test_delete_untagged_keeps_index_children_and_referrers(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    amd, amd_payload = await push_image(client, "multi", None, seed="amd64")
    arm, arm_payload = await push_image(client, "multi", None, seed="arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": amd, "size": len(amd_payload)},
                {"mediaType": OCI_MANIFEST, "digest": arm, "size": len(arm_payload)},
            ],
        }
    ).encode()
    r = await client.put(
        "/v2/multi/manifests/latest", content=index, headers={"Content-Type": OCI_INDEX}
    )
    assert r.status_code == 201
    # A signature on the index, untagged but attached to a kept manifest.
    sig = await push_signature(client, "multi", digest_of(index), OCI_INDEX, len(index))
    orphan, _ = await push_image(client, "multi", None, seed="untagged and alone")

    policy = Policy(grace_seconds=0, delete_untagged=True)
    plan = await registry.lifecycle.collect(policy, dry_run=False)
    assert [m["digest"] for m in plan.manifests] == [orphan]
    for digest in (amd, arm, sig, digest_of(index)):
        assert (await client.head(f"/v2/multi/manifests/{digest}")).status_code == 200
    assert (await client.head(f"/v2/multi/manifests/{orphan}")).status_code == 404
    # The orphan's own blobs went with it; shared ones stayed.
    assert len(plan.blobs) == 2


async def test_orphan_referrers(client: httpx.AsyncClient, registry: Registry) -> None:
    subject, _ = await push_image(client, "app", "v1")
    sig = await push_signature(client, "app", subject, OCI_MANIFEST, 1)
    plan = await registry.lifecycle.collect(
        Policy(grace_seconds=0, delete_orphan_referrers=True), dry_run=False
    )
    assert plan.manifests == []
    assert (await client.delete(f"/v2/app/manifests/{subject}")).status_code == 202
    plan = await registry.lifecycle.collect(
        Policy(grace_seconds=0, delete_orphan_referrers=True), dry_run=False
    )
    assert [m["digest"] for m in plan.manifests] == [sig]


async def test_stale_uploads_are_purged(client: httpx.AsyncClient, registry: Registry) -> None:
    location = (await client.post("/v2/app/blobs/uploads/")).headers["Location"]
    await client.patch(location, content=b"half")
    plan = await registry.lifecycle.collect(Policy(upload_max_age=3600), dry_run=False)
    assert plan.uploads == []
    plan = await registry.lifecycle.collect(Policy(upload_max_age=0), dry_run=True)
    assert len(plan.uploads) == 1
    assert (await client.get(location)).status_code == 204
    plan = await registry.lifecycle.collect(Policy(upload_max_age=0), dry_run=False)
    assert len(plan.uploads) == 1
    assert (await client.get(location)).status_code == 404


async def test_one_sweep_at_a_time(registry: Registry) -> None:
    assert await registry.metadata.acquire_lock("gc", "someone-else", 60)
    with pytest.raises(SweepInProgress):
        await registry.lifecycle.collect(NOW, dry_run=False)
    # A dry run takes no lease.
    await registry.lifecycle.collect(NOW, dry_run=True)


async def test_usage(client: httpx.AsyncClient, registry: Registry) -> None:
    shared = await push_blob(client, "a", b"shared layer!")
    await push_blob(client, "b", b"shared layer!")
    config_a = await push_blob(client, "a", b'{"a":1}')
    config_b = await push_blob(client, "b", b'{"b":2}')
    for repo, config, csize in (("a", config_a, 7), ("b", config_b, 7)):
        payload = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/x", "digest": config, "size": csize},
                "layers": [{"mediaType": "application/x", "digest": shared, "size": 13}],
            }
        ).encode()
        r = await client.put(
            f"/v2/{repo}/manifests/v1", content=payload, headers={"Content-Type": OCI_MANIFEST}
        )
        assert r.status_code == 201
    await push_blob(client, "a", b"loose")
    usage = await registry.lifecycle.usage(grace_seconds=0)
    assert usage["blobs"] == 4
    assert usage["reclaimable_bytes"] == 5
    by_name = {r["name"]: r for r in usage["repositories"]}
    a = by_name["a"]
    manifest_size = (await client.head("/v2/a/manifests/v1")).headers["Content-Length"]
    assert a["size"] == 7 + 13 + int(manifest_size)
    assert a["shared"] == 13
    assert a["tags"] == [
        {
            "tag": "v1",
            "digest": (await client.head("/v2/a/manifests/v1")).headers["Docker-Content-Digest"],
            "size": 20,
            "unique": 7,
            "shared": 13,
        }
    ]
    only_b = await registry.lifecycle.usage("b")
    assert [r["name"] for r in only_b["repositories"]] == ["b"]
