from __future__ import annotations

import httpx

from tests.api.conftest import error_code


async def test_version_check(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/")
    assert r.status_code == 200
    assert r.json() == {}
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v3/nothing")
    assert r.status_code == 404
    assert error_code(r) == "NOT_FOUND"
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


async def test_wrong_method_is_a_json_405(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/repo/tags/list")
    assert r.status_code == 405
    assert error_code(r) == "UNSUPPORTED"
