"""Cache fills in the event stream: a real regd mirroring Distribution 2.8 reports each
manifest and blob it fetches and stores to a real webhook receiver, only to endpoints that
asked for fills, and nothing when a pull is served from the cache.

Deliveries are asynchronous, so "no fill was reported" is read after a marker: a push made
after the pull, whose event is committed after any fill of that pull and delivered in order
behind it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.events.receiver import Receiver
from tests.helpers.clients import Skopeo
from tests.helpers.http_api import MANIFEST_ACCEPT, ApiClient
from tests.helpers.oci import LayoutImage
from tests.helpers.servers import RegdServer
from tests.mirror.conftest import Upstream, mirror_table, poll, seed, start_regd, start_upstream

FILLS, PLAIN = "/fills", "/plain"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    server = start_upstream(tmp_path / "upstream")
    yield server
    server.stop()


@pytest.fixture
def regd(tmp_path: Path, upstream: Upstream, receiver: Receiver) -> Iterator[RegdServer]:
    config = mirror_table("up", upstream.url) + (
        f"""
[events]
poll_interval = 0.1

[[events.endpoint]]
name = "fills"
url = "{receiver.url}{FILLS}"
fills = true

[[events.endpoint]]
name = "plain"
url = "{receiver.url}{PLAIN}"
"""
    )
    server = start_regd(tmp_path / "regd", config)
    yield server
    server.stop()


def _fills(receiver: Receiver, path: str) -> list[tuple[str, str, str | None]]:
    return [
        (e["target"]["repository"], e["target"]["digest"], e["target"].get("tag"))
        for e in receiver.events(path)
        if e["action"] == "fill"
    ]


def _marker(regd: RegdServer, receiver: Receiver, data: bytes) -> None:
    """Push a blob elsewhere and wait until both endpoints have its event: everything
    committed before it has been delivered by then."""
    with ApiClient(regd.url) as api:
        digest = api.push_blob("marker/repo", data)

    def arrived(path: str) -> bool:
        return any(
            e["action"] == "push" and e["target"].get("digest") == digest
            for e in receiver.events(path)
        )

    for path in (FILLS, PLAIN):
        poll(lambda path=path: arrived(path), f"the marker's event at {path}")


def test_a_cold_pull_reports_each_fill_and_a_warm_pull_none(
    regd: RegdServer,
    upstream: Upstream,
    receiver: Receiver,
    skopeo: Skopeo,
    small_image: LayoutImage,
    tmp_path: Path,
) -> None:
    seed(skopeo, small_image, upstream, "lib/app:v1")
    manifest: dict[str, Any] = json.loads(
        skopeo.inspect_raw(f"docker://{upstream.host}/lib/app:v1")
    )
    blobs = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}

    skopeo.copy(f"docker://{regd.host}/up/lib/app:v1", f"oci:{tmp_path / 'cold'}:v1")
    _marker(regd, receiver, b"after the cold pull")

    fills = _fills(receiver, FILLS)
    assert sorted(fills) == sorted(
        [("up/lib/app", small_image.digest, "v1"), *(("up/lib/app", d, None) for d in blobs)]
    )
    by_digest = {e["target"]["digest"]: e for e in receiver.events(FILLS) if e["action"] == "fill"}
    served = httpx.head(
        f"{upstream.url}/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}, timeout=30
    )
    assert by_digest[small_image.digest]["target"]["mediaType"] == served.headers["content-type"]
    assert by_digest[small_image.digest]["target"]["url"].endswith(
        f"/v2/up/lib/app/manifests/{small_image.digest}"
    )
    for digest in blobs:
        assert by_digest[digest]["target"]["mediaType"] == "application/octet-stream"
        assert by_digest[digest]["request"]["method"] == "GET"
    assert _fills(receiver, PLAIN) == []

    skopeo.copy(f"docker://{regd.host}/up/lib/app:v1", f"oci:{tmp_path / 'warm'}:v1")
    _marker(regd, receiver, b"after the warm pull")
    assert sorted(_fills(receiver, FILLS)) == sorted(fills)
    assert _fills(receiver, PLAIN) == []
