"""`/admin/v1/events` in-process: guarded as the rest of the admin API, bad requests refused
with the spec's error answer, and the queues as operators see them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from regd.app import create_app
from regd.config import Config, EventEndpoint
from regd.registry import Registry

TOKEN = "an-admin-token-long-enough"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin_client(registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    config = Config(
        access_log=False,
        upload_purge_interval=0,
        admin_token=TOKEN,
        event_endpoints=(EventEndpoint("hook", "http://127.0.0.1:9/", threshold=1),),
    )
    app = create_app(registry, config)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as c:
        yield c


async def test_the_queues_need_the_admin_token(admin_client: httpx.AsyncClient) -> None:
    assert (await admin_client.get("/admin/v1/events")).status_code == 401
    assert (await admin_client.post("/admin/v1/events/retry", json={})).status_code == 401


async def test_queues_retry_and_drop(admin_client: httpx.AsyncClient, registry: Registry) -> None:
    data = b"hello"
    digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    pushed = await admin_client.post(
        "/v2/team/app/blobs/uploads/", params={"digest": digest}, content=data
    )
    assert pushed.status_code == 201
    await registry.metadata.delivery_failed("hook", "connection refused", 1e12)

    (queue,) = (await admin_client.get("/admin/v1/events", headers=ADMIN)).json()["endpoints"]
    assert queue["name"] == "hook"
    assert queue["configured"] is True
    assert queue["pending"] == 1
    assert queue["failures"] == 1
    assert queue["failing"] is True
    assert queue["last_error"] == "connection refused"
    failed = await admin_client.get("/admin/v1/events", params={"failed": "1"}, headers=ADMIN)
    assert [q["name"] for q in failed.json()["endpoints"]] == ["hook"]

    retried = await admin_client.post("/admin/v1/events/retry", json={}, headers=ADMIN)
    assert retried.json() == {"retried": ["hook"]}
    assert await registry.metadata.endpoint_state("hook") == (0, 0.0)

    for body, status, code in (
        ({}, 400, "UNSUPPORTED"),
        ({"endpoint": "hook", "through": "x"}, 400, "UNSUPPORTED"),
        ({"endpoint": "nope"}, 404, "NAME_UNKNOWN"),
    ):
        refused = await admin_client.post("/admin/v1/events/drop", json=body, headers=ADMIN)
        assert refused.status_code == status, refused.text
        assert refused.json()["errors"][0]["code"] == code
    dropped = await admin_client.post(
        "/admin/v1/events/drop", json={"endpoint": "hook"}, headers=ADMIN
    )
    assert dropped.json() == {"endpoint": "hook", "dropped": 1}
