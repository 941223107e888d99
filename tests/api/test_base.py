from __future__ import annotations

import logging

import httpx
import pytest

from regd.app import create_app
from regd.config import Config
from regd.registry import Registry
from tests.helpers.inprocess import error_code, push_blob


async def test_version_check(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/")
    assert r.status_code == 200
    assert r.json() == {}
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v3/nothing")
    assert r.status_code == 404
    assert error_code(r) == "UNSUPPORTED"
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


async def test_wrong_method_is_a_json_405(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/repo/tags/list")
    assert r.status_code == 405
    assert error_code(r) == "UNSUPPORTED"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v2/repo/blobs/uploads/"),
        ("HEAD", "/v2/repo/blobs/uploads/6d00d2f0-7f4a-40e7-80d7-939baa97185e"),
        ("POST", "/v2/repo/blobs/uploads/d2fc3e09-48fa-4d88-806d-6ecbba4acbf2"),
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


async def test_access_log_covers_both_layers(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(registry, Config(access_log=True, upload_purge_interval=0))
    transport = httpx.ASGITransport(app=app, client=("192.0.2.9", 41000))
    caplog.set_level(logging.INFO, logger="regd.access")
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as client:
        digest = await push_blob(client, "logged", b"some bytes")
        assert (await client.head(f"/v2/logged/blobs/{digest}")).status_code == 200
        assert (await client.get("/v2/logged/manifests/nope")).status_code == 404
        assert (await client.get("/v2/_catalog")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "regd.access"]
    expected = [
        ("POST", "/v2/logged/blobs/uploads/", 201),
        ("HEAD", f"/v2/logged/blobs/{digest}", 200),
        ("GET", "/v2/logged/manifests/nope", 404),
        ("GET", "/v2/_catalog", 200),
    ]
    assert len(lines) == len(expected)
    for line, (method, path, status) in zip(lines, expected, strict=True):
        assert f"method={method} path={path} status={status}" in line
        assert "remote=192.0.2.9" in line
