"""verify: corrupt, missing and unknown blobs, and what --repair does about them."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from regd.oci.digest import Digest
from regd.registry import Registry
from regd.storage import layout
from tests.helpers.inprocess import digest_of, push_blob


def on_disk(tmp_path: Path, digest: str) -> Path:
    return tmp_path / "blobs" / layout.blob_data(Digest.parse(digest))


async def test_healthy_store(client: httpx.AsyncClient, registry: Registry) -> None:
    for i in range(5):
        await push_blob(client, "app", os.urandom(1000 + i))
    report = await registry.integrity.verify(repair=False)
    assert report.healthy
    assert report.checked == 5
    assert report.bytes_checked == sum(1000 + i for i in range(5))


async def test_damage_is_found_and_repaired(
    client: httpx.AsyncClient, registry: Registry, tmp_path: Path
) -> None:
    good = await push_blob(client, "app", b"good bytes")
    corrupt = await push_blob(client, "app", b"will rot")
    missing = await push_blob(client, "app", b"will vanish")
    on_disk(tmp_path, corrupt).write_bytes(b"rotten!!")
    on_disk(tmp_path, missing).unlink()
    stray = digest_of(b"nobody knows me")
    path = on_disk(tmp_path, stray)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"nobody knows me")
    os.utime(path, (1, 1))  # long ago

    report = await registry.integrity.verify(repair=False)
    body = report.to_json()
    assert not body["healthy"]
    assert [e["digest"] for e in body["corrupt"]] == [corrupt]
    assert body["corrupt"][0]["actual"] == digest_of(b"rotten!!")
    assert [e["digest"] for e in body["missing"]] == [missing]
    assert [e["digest"] for e in body["unknown"]] == [stray]
    # Nothing was changed.
    assert (await client.head(f"/v2/app/blobs/{corrupt}")).status_code == 200

    report = await registry.integrity.verify(repair=True, grace_seconds=3600)
    assert report.repaired
    assert (await client.head(f"/v2/app/blobs/{corrupt}")).status_code == 404
    assert (await client.head(f"/v2/app/blobs/{missing}")).status_code == 404
    assert (await client.head(f"/v2/app/blobs/{good}")).status_code == 200
    quarantined = tmp_path / "blobs" / layout.quarantine_data(Digest.parse(corrupt))
    assert quarantined.read_bytes() == b"rotten!!"
    assert not path.exists()
    # A client pushing the blob again restores it.
    await push_blob(client, "app", b"will rot")
    assert (await client.get(f"/v2/app/blobs/{corrupt}")).content == b"will rot"
    assert (await registry.integrity.verify(repair=False)).healthy


async def test_verify_through_the_admin_api(client: httpx.AsyncClient) -> None:
    await push_blob(client, "app", b"fine")
    r = await client.post("/admin/v1/verify", json={})
    assert r.status_code == 200
    assert r.json()["healthy"] is True
    r = await client.post("/admin/v1/verify", json={"repair": "yes"})
    assert r.status_code == 400
