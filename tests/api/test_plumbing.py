"""What both dispatchers share: headers, refusals, error answers, the access log.

The data plane (manifests, blobs, uploads) and Quart's control plane (version check,
listings, admin) must be indistinguishable from outside in all of these.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import httpx
import pytest

from regd.api.errors import HTTP_FAILURES
from regd.app import create_app
from regd.config import Config
from regd.errors import RegistryError
from regd.metadata import MetadataError
from regd.registry import Registry
from tests.helpers.inprocess import error_code, push_blob, push_image

API_VERSION = "registry/2.0"
# One request per plane for each check: (method, path) pairs.
DATA_PLANE = ("GET", "/v2/app/manifests/v1")
CONTROL_PLANE = ("GET", "/v2/app/tags/list")


def _raise(error: BaseException) -> Any:
    async def fail(*args: object, **kwargs: object) -> NoReturn:
        raise error

    return fail


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v2/app/manifests/v1"), ("PATCH", "/v2/app/blobs/sha256:00"), ("PUT", "/v2/")],
)
async def test_refused_methods_answer_alike(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    r = await client.request(method, path)
    assert r.status_code == 405
    assert r.headers["Docker-Distribution-Api-Version"] == API_VERSION
    assert r.json() == {
        "errors": [
            {"code": "UNSUPPORTED", "message": f"method {method} is not allowed on this endpoint"}
        ]
    }


async def test_unknown_endpoint(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/app/nothing-here")
    assert r.status_code == 404
    assert r.headers["Docker-Distribution-Api-Version"] == API_VERSION
    assert error_code(r) == "UNSUPPORTED"


@pytest.mark.parametrize("target", ["manifests.get", "listings.tags"])
async def test_unexpected_failure_is_a_500_with_the_version_header(
    client: httpx.AsyncClient,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: str,
) -> None:
    part, method = target.split(".")
    monkeypatch.setattr(getattr(registry, part), method, _raise(RuntimeError("injected")))
    request = DATA_PLANE if part == "manifests" else CONTROL_PLANE
    with caplog.at_level(logging.ERROR, logger="regd.api"):
        r = await client.request(*request)
    assert r.status_code == 500
    assert r.headers["Docker-Distribution-Api-Version"] == API_VERSION
    assert r.content == b""
    assert [rec.getMessage() for rec in caplog.records if rec.name == "regd.api"] == [
        f"unexpected failure method=GET path={request[1]}"
    ]


@pytest.mark.parametrize("target", ["manifests.get", "listings.tags"])
async def test_backend_failure_asks_to_retry_on_both_planes(
    client: httpx.AsyncClient,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: str,
) -> None:
    part, method = target.split(".")
    monkeypatch.setattr(getattr(registry, part), method, _raise(MetadataError("db gone")))
    request = DATA_PLANE if part == "manifests" else CONTROL_PLANE
    with caplog.at_level(logging.ERROR, logger="regd.api"):
        r = await client.request(*request)
    assert r.status_code == 503
    assert r.headers["Docker-Distribution-Api-Version"] == API_VERSION
    assert int(r.headers["Retry-After"]) > 0
    assert error_code(r) == "TOOMANYREQUESTS"
    (record,) = [rec for rec in caplog.records if rec.name == "regd.api"]
    assert record.exc_info is None
    assert "db gone" in record.getMessage()


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


async def test_deeply_nested_manifest_is_invalid(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    doc = json.loads(b'{"schemaVersion":2,"config":{}}')
    doc["config"] = {"mediaType": "application/vnd.oci.image.config.v1+json"}
    doc["config"].update(digest=config, size=2)
    doc["layers"] = []
    payload = json.dumps(doc)[:-1].encode() + b',"annotations":' + _nested(1000) + b"}"
    r = await client.put(
        "/v2/app/manifests/deep",
        content=payload,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_INVALID"
    assert "nests 1001 levels" in r.json()["errors"][0]["message"]


async def test_ordinary_nesting_is_accepted(client: httpx.AsyncClient) -> None:
    # Many layers mean many brackets, but not depth.
    layers = [await push_blob(client, "app", f"layer {i}".encode()) for i in range(80)]
    await push_image(client, "app", "wide", seed="wide")
    config = await push_blob(client, "app", b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d,
                "size": len(f"layer {i}"),
                "annotations": {"note": "[[[[{{{{" * 20},
            }
            for i, d in enumerate(layers)
        ],
    }
    r = await client.put(
        "/v2/app/manifests/many",
        content=json.dumps(doc).encode(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text


async def test_deeply_nested_admin_body_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/admin/v1/gc", content=b"[" * 1000 + b"]" * 1000)
    assert r.status_code == 400
    assert error_code(r) == "UNSUPPORTED"


async def test_admin_body_is_bounded(client: httpx.AsyncClient) -> None:
    body = b'{"dry_run": true, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = await client.post("/admin/v1/gc", content=body)
    assert r.status_code == 413
    assert r.headers["Docker-Distribution-Api-Version"] == API_VERSION
    assert error_code(r) == "SIZE_INVALID"


@pytest.fixture
async def logged_client(registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(registry, Config(access_log=True, upload_purge_interval=0))
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as c:
        yield c


async def test_one_access_log_line_per_request_on_both_planes(
    logged_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="regd.access"):
        await logged_client.get("/v2/")
        await logged_client.get("/v2/app/manifests/v1")
        await logged_client.get("/v2/app/tags/list")
        await logged_client.post("/v2/app/manifests/v1")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "regd.access"]
    assert len(lines) == 4, lines
    expected = [
        ("GET", "/v2/", 200, 2),
        ("GET", "/v2/app/manifests/v1", 404),
        ("GET", "/v2/app/tags/list", 404),
        ("POST", "/v2/app/manifests/v1", 405),
    ]
    ids = set()
    for line, (method, path, status, *length) in zip(lines, expected, strict=True):
        fields = dict(part.split("=", 1) for part in line.split())
        assert (fields["method"], fields["path"], int(fields["status"])) == (method, path, status)
        assert fields["remote"] == "192.0.2.7"
        if length:
            assert int(fields["length"]) == length[0]
        ids.add(fields["id"])
    assert len(ids) == 4


SPEC_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
}


def test_every_error_code_is_in_the_spec_table() -> None:
    import regd.app  # noqa: F401 - loads every module that defines an error

    def subclasses(cls: type[RegistryError]) -> list[type[RegistryError]]:
        found = []
        for sub in cls.__subclasses__():
            found += [sub, *subclasses(sub)]
        return found

    codes = {cls.__qualname__: cls.code for cls in subclasses(RegistryError)}
    assert len(codes) > 15
    assert {name: code for name, code in codes.items() if code not in SPEC_CODES} == {}
    assert {code for code, _ in HTTP_FAILURES.values()} <= SPEC_CODES
