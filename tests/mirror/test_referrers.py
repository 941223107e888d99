"""Referrers through the mirror: the upstream's list, by the referrers API (a regd upstream)
or by the tag schema's fallback index (Distribution 2.8, which has no referrers API); kept
with the tag TTL and served stale while the upstream is down; the referrers themselves then
pulled through the mirror like any manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.http_api import ApiClient
from tests.helpers.oci import OCI_INDEX, OCI_MANIFEST
from tests.helpers.servers import RegdServer
from tests.mirror.conftest import Upstream, mirror_table, poll, start_regd, start_upstream

SIGNATURE = "application/vnd.example.signature"
SBOM = "application/vnd.example.sbom"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    server = start_upstream(tmp_path / "upstream")
    yield server
    server.stop()


@pytest.fixture
def regd_upstream(tmp_path: Path) -> Iterator[RegdServer]:
    server = start_regd(tmp_path / "regd-upstream", "")
    yield server
    server.stop()


@pytest.fixture
def mirror(tmp_path: Path, upstream: Upstream, regd_upstream: RegdServer) -> Iterator[RegdServer]:
    server = start_regd(
        tmp_path / "mirror",
        mirror_table("up", upstream.url, manifest_ttl="1s", timeout="5s")
        + mirror_table("rg", regd_upstream.url, manifest_ttl="1s", timeout="5s"),
    )
    yield server
    server.stop()


def _subject(api: ApiClient, name: str) -> dict[str, Any]:
    digest, body = api.push_tiny_image(name, "v1", payload=b"the subject's layer")
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body)}


def _referrers(server: RegdServer, name: str, subject: str, **params: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v2/{name}/referrers/{subject}", params=params, timeout=30)


def _descriptor(digest: str, body: bytes, artifact_type: str) -> dict[str, Any]:
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(body),
        "artifactType": artifact_type,
    }


def test_distribution_upstream_the_tag_schema_index_is_mirrored_and_served_stale(
    upstream: Upstream, mirror: RegdServer
) -> None:
    with ApiClient(upstream.url) as api:
        subject = _subject(api, "lib/app")
        signed, signature, _ = api.push_artifact(
            "lib/app", subject, artifact_type=SIGNATURE, payload=b"signed"
        )
        listed, sbom, _ = api.push_artifact("lib/app", subject, artifact_type=SBOM, payload=b"sbom")
        # What a client pushing to a registry without the referrers API maintains.
        fallback = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                _descriptor(signed, signature, SIGNATURE),
                _descriptor(listed, sbom, SBOM),
            ],
        }
        tag = "sha256-" + subject["digest"].removeprefix("sha256:")
        api.push_manifest("lib/app", tag, json.dumps(fallback).encode(), OCI_INDEX)

    answer = _referrers(mirror, "up/lib/app", subject["digest"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == OCI_INDEX
    assert answer.json()["manifests"] == fallback["manifests"]
    assert "warning" not in answer.headers

    only = _referrers(mirror, "up/lib/app", subject["digest"], artifactType=SBOM)
    assert only.json()["manifests"] == [_descriptor(listed, sbom, SBOM)]
    assert only.headers["oci-filters-applied"] == "artifactType"

    # The referrer and its payload come through the mirror like any manifest and blob.
    with ApiClient(mirror.url) as through:
        assert through.get_manifest("up/lib/app", signed).content == signature
        layer = json.loads(signature)["layers"][0]
        assert through.get_blob("up/lib/app", layer["digest"]) == b"signed"

    none = _referrers(mirror, "up/lib/app", "sha256:" + "0" * 64)
    assert none.status_code == 200
    assert none.json()["manifests"] == []

    upstream.stop()

    def stale() -> httpx.Response | None:
        answer = _referrers(mirror, "up/lib/app", subject["digest"])
        return answer if "warning" in answer.headers else None

    served = poll(stale, "the referrers to be served stale once their TTL passed")
    assert served.status_code == 200
    assert "Response is Stale" in served.headers["warning"]
    assert served.json()["manifests"] == fallback["manifests"]

    # Never fetched before: nothing to stand in, so the upstream's failure is the answer.
    unknown = _referrers(mirror, "up/lib/other", subject["digest"])
    assert unknown.status_code == 503, unknown.text


def test_regd_upstream_the_referrers_api_is_mirrored(
    regd_upstream: RegdServer, mirror: RegdServer
) -> None:
    with ApiClient(regd_upstream.url) as api:
        subject = _subject(api, "team/app")
        signed, signature, _ = api.push_artifact(
            "team/app",
            subject,
            artifact_type=SIGNATURE,
            payload=b"signed",
            annotations={"org.example.by": "ci"},
        )
        # regd indexes referrers itself: no fallback tag exists to be read instead.
        assert not [t for t in api.tags("team/app") if t.startswith("sha256-")]

    answer = _referrers(mirror, "rg/team/app", subject["digest"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["manifests"] == [
        {**_descriptor(signed, signature, SIGNATURE), "annotations": {"org.example.by": "ci"}}
    ]
    assert (
        _referrers(mirror, "rg/team/app", subject["digest"], artifactType=SBOM).json()["manifests"]
        == []
    )
    with ApiClient(mirror.url) as through:
        assert through.get_manifest("rg/team/app", signed).content == signature
