from __future__ import annotations

import uuid

import httpx
import pytest

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


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v2/repo/blobs/uploads/"),
        ("HEAD", f"/v2/repo/blobs/uploads/{uuid.uuid4()}"),
        ("POST", f"/v2/repo/blobs/uploads/{uuid.uuid4()}"),
        ("POST", "/v2/repo/manifests/latest"),
        ("PATCH", "/v2/repo/blobs/sha256:" + "0" * 64),
    ],
)
async def test_wrong_method_on_direct_routes_is_a_json_405(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    # Upload paths are served below Quart; manifest and blob paths are split between
    # the two. Either way a method no route takes is a 405, not a 404.
    r = await client.request(method, path)
    assert r.status_code == 405
    if method != "HEAD":
        assert error_code(r) == "UNSUPPORTED"
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
