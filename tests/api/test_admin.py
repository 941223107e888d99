"""The admin API: gc, usage, status, repository deletion, retention, and who may call it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from regd import __version__
from regd.app import create_app
from regd.config import Config
from regd.registry import Registry
from tests.helpers.inprocess import error_code, push_blob, push_image

TOKEN = "s3cret-admin-token-123"


@pytest.fixture
async def remote_client(registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(registry, Config(access_log=False, upload_purge_interval=0))
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as c:
        yield c


@pytest.fixture
async def token_client(registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(registry, Config(access_log=False, upload_purge_interval=0, admin_token=TOKEN))
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as c:
        yield c


async def test_gc_dry_run_then_real(client: httpx.AsyncClient) -> None:
    await push_image(client, "app", "v1")
    loose = await push_blob(client, "app", b"loose bytes")
    r = await client.post("/admin/v1/gc", json={"dry_run": True, "grace_seconds": 0})
    assert r.status_code == 200
    plan = r.json()
    assert plan["dry_run"] is True
    assert [b["digest"] for b in plan["blobs"]] == [loose]
    assert plan["totals"] == {
        "manifests": 0,
        "blobs": 1,
        "uploads": 0,
        "bytes_freed": 11,
        "held_blobs": 0,
        "held_bytes": 0,
    }
    assert plan["repositories"] == {
        "app": {"manifests": 0, "manifest_bytes": 0, "blobs": 1, "blob_bytes": 11}
    }
    assert (await client.head(f"/v2/app/blobs/{loose}")).status_code == 200
    r = await client.post("/admin/v1/gc", json={"grace_seconds": 0})
    assert r.json()["totals"]["blobs"] == 1
    assert (await client.head(f"/v2/app/blobs/{loose}")).status_code == 404
    # The default grace period (1 h) protects what was just pushed.
    await push_blob(client, "app", b"fresh")
    assert (await client.post("/admin/v1/gc", json={})).json()["totals"]["blobs"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"dry_run": "yes"}',
        b'{"grace_seconds": -1}',
        b'{"grace_seconds": "1h"}',
        b'{"delete_untagged": 1}',
    ],
)
async def test_gc_bad_requests(client: httpx.AsyncClient, body: bytes) -> None:
    r = await client.post("/admin/v1/gc", content=body)
    assert r.status_code == 400
    assert error_code(r) == "UNSUPPORTED"


async def test_gc_conflict(client: httpx.AsyncClient, registry: Registry) -> None:
    await registry.metadata.acquire_lock("gc", "other", 60)
    r = await client.post("/admin/v1/gc", json={})
    assert r.status_code == 409
    assert error_code(r) == "TOOMANYREQUESTS"


async def test_usage(client: httpx.AsyncClient) -> None:
    await push_image(client, "app", "v1")
    r = await client.get("/admin/v1/usage")
    assert r.status_code == 200
    body = r.json()
    assert [repo["name"] for repo in body["repositories"]] == ["app"]
    assert body["repositories"][0]["tags"][0]["tag"] == "v1"
    assert (await client.get("/admin/v1/usage?repository=none")).json()["repositories"] == []


async def test_usage_waits_its_turn_then_answers_429(
    client: httpx.AsyncClient, registry: Registry, autojump_clock: trio.testing.MockClock
) -> None:
    # One report at a time: a second caller waits for the first, but not forever.
    async with registry.lifecycle._usage_turn:
        r = await client.get("/admin/v1/usage")
    assert r.status_code == 429
    assert error_code(r) == "TOOMANYREQUESTS"
    assert "another usage report" in r.json()["errors"][0]["message"]
    assert (await client.get("/admin/v1/usage")).status_code == 200


async def test_status(client: httpx.AsyncClient, registry: Registry) -> None:
    await push_image(client, "app", "v1")
    r = await client.get("/admin/v1/status")
    assert r.status_code == 200
    body = r.json()
    assert body["version"] == __version__
    assert body["uptime_seconds"] >= 0
    assert body["workers"] == 1
    assert body["storage"]["driver"] == "filesystem"
    volume = body["storage"]["volume"]
    assert 0 < volume["free_bytes"] <= volume["size_bytes"]
    assert body["database"] == registry.metadata.dialect
    assert body["collection"] == {"running": False, "lease_until": None}
    # A sweep holds the `gc` lease while it runs, whichever replica runs it.
    await registry.metadata.acquire_lock("gc", "other", 60)
    collection = (await client.get("/admin/v1/status")).json()["collection"]
    assert collection["running"] is True
    assert collection["lease_until"] > 0


async def test_delete_repository(client: httpx.AsyncClient) -> None:
    await push_image(client, "gone/app", "v1")
    await push_image(client, "gone/app", "v2", seed="2")
    await push_image(client, "stays", "v1")
    r = await client.delete("/admin/v1/repositories/gone/app?dry_run=1")
    assert r.json() == {"repository": "gone/app", "dry_run": True, "tags": 2}
    assert (await client.get("/v2/gone/app/tags/list")).status_code == 200
    r = await client.delete("/admin/v1/repositories/gone/app")
    assert r.status_code == 200
    assert r.json() == {"repository": "gone/app", "dry_run": False, "tags": 2, "manifests": 2}
    assert (await client.get("/v2/gone/app/tags/list")).status_code == 404
    assert (await client.get("/v2/_catalog")).json() == {"repositories": ["stays"]}
    r = await client.delete("/admin/v1/repositories/gone/app")
    assert r.status_code == 404
    assert error_code(r) == "NAME_UNKNOWN"
    r = await client.delete("/admin/v1/repositories/Bad")
    assert r.status_code == 400


async def test_prune(client: httpx.AsyncClient) -> None:
    for i, tag in enumerate(["v1.9.0", "v1.10.0", "v1.2.0", "latest", "dev-abc"]):
        await push_image(client, "app", tag, seed=str(i))
    r = await client.post(
        "/admin/v1/repositories/app/prune",
        json={"keep_last": 2, "keep": "^latest$", "dry_run": True},
    )
    assert r.status_code == 200
    body = r.json()
    # Newest two by push time are kept (dev-abc, latest); `latest` is kept by pattern anyway.
    assert [t["tag"] for t in body["removed"]] == ["v1.2.0", "v1.10.0", "v1.9.0"]
    assert (await client.get("/v2/app/tags/list")).json()["tags"] == sorted(
        ["v1.9.0", "v1.10.0", "v1.2.0", "latest", "dev-abc"]
    )
    r = await client.post("/admin/v1/repositories/app/prune", json={"keep_last": 2})
    assert sorted(t["tag"] for t in r.json()["removed"]) == ["v1.10.0", "v1.2.0", "v1.9.0"]
    assert (await client.get("/v2/app/tags/list")).json()["tags"] == ["dev-abc", "latest"]
    r = await client.post("/admin/v1/repositories/app/prune", json={"older_than": 3600})
    assert r.json()["removed"] == []


@pytest.mark.parametrize(
    "body", [{}, {"keep_last": -1}, {"keep": "("}, {"keep_last": "2"}, {"older_than": -5}]
)
async def test_prune_bad_policies(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    await push_image(client, "app", "v1")
    r = await client.post("/admin/v1/repositories/app/prune", json=body)
    assert r.status_code == 400


async def test_admin_is_loopback_only_without_a_token(remote_client: httpx.AsyncClient) -> None:
    r = await remote_client.post("/admin/v1/gc", json={"dry_run": True})
    assert r.status_code == 403
    assert error_code(r) == "DENIED"
    # The registry API itself is not affected.
    assert (await remote_client.get("/v2/")).status_code == 200


async def test_admin_token(token_client: httpx.AsyncClient) -> None:
    r = await token_client.get("/admin/v1/usage")
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    r = await token_client.get("/admin/v1/usage", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await token_client.get("/admin/v1/usage", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
