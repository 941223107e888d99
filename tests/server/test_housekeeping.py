"""regd's own schedule: periodic gc, retention and upload purging, in two workers."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import RegdFactory

pytestmark = pytest.mark.e2e


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(client: httpx.Client, repo: str, tag: str, seed: str) -> None:
    config = json.dumps({"seed": seed}).encode()
    client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(config)}, content=config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/x", "digest": sha(config), "size": len(config)},
            "layers": [],
        }
    ).encode()
    r = client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("housekeeping did not happen in time")


def test_periodic_housekeeping(regd_factory: RegdFactory, database_url: str | None) -> None:
    server = regd_factory(
        database_url=database_url,
        workers=2,
        env={
            "REGD_GC_INTERVAL": "1",
            "REGD_GC_GRACE": "0",
            "REGD_UPLOAD_PURGE_INTERVAL": "1",
            "REGD_UPLOAD_MAX_AGE": "0",
            "REGD_RETENTION": json.dumps([{"repositories": "ci/.*", "keep_last": 1}]),
            "REGD_RETENTION_INTERVAL": "1",
        },
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(3):
            push_image(client, "ci/app", f"build-{i}", str(i))
            time.sleep(0.01)
        push_image(client, "keep/app", "v1", "keep")
        push_image(client, "keep/app", "v2", "keep2")
        loose = b"garbage nobody references"
        client.post("/v2/keep/app/blobs/uploads/", params={"digest": sha(loose)}, content=loose)
        session = client.post("/v2/keep/app/blobs/uploads/").headers["Location"]

        eventually(lambda: client.head(f"/v2/keep/app/blobs/{sha(loose)}").status_code == 404)
        eventually(lambda: client.get(session).status_code == 404)
        eventually(lambda: client.get("/v2/ci/app/tags/list").json()["tags"] == ["build-2"])
        # Policies apply only where their pattern matches.
        assert client.get("/v2/keep/app/tags/list").json()["tags"] == ["v1", "v2"]
        for tag in ("v1", "v2"):
            assert client.get(f"/v2/keep/app/manifests/{tag}").status_code == 200
