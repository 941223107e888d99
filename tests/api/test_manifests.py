"""Manifest push, pull and delete, and every way a client can get a manifest wrong."""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest

from tests.helpers.inprocess import digest_of, error_code, image_manifest, push_blob, push_image

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


async def put(
    client: httpx.AsyncClient, repo: str, ref: str, payload: bytes, ctype: str = OCI_MANIFEST
) -> httpx.Response:
    return await client.put(
        f"/v2/{repo}/manifests/{ref}", content=payload, headers={"Content-Type": ctype}
    )


async def test_push_and_pull_byte_for_byte(client: httpx.AsyncClient) -> None:
    digest, payload = await push_image(client, "app", "v1")
    assert digest == digest_of(payload)
    for ref in ("v1", digest):
        r = await client.get(f"/v2/app/manifests/{ref}")
        assert r.status_code == 200
        assert r.content == payload
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest
        h = await client.head(f"/v2/app/manifests/{ref}")
        assert h.status_code == 200
        assert h.content == b""
        assert h.headers["Content-Length"] == str(len(payload))
        assert h.headers["Content-Type"] == OCI_MANIFEST
        assert h.headers["Docker-Content-Digest"] == digest


async def test_odd_formatting_is_preserved(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    doc = json.loads(image_manifest((config, 2), []))
    payload = (json.dumps(doc, indent=7, sort_keys=True) + "\n\n").encode()
    r = await put(client, "app", "pretty", payload)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest_of(payload)
    assert (await client.get("/v2/app/manifests/pretty")).content == payload


async def test_docker_schema2_manifest(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b'{"os":"linux"}')
    layer = await push_blob(client, "app", b"layer")
    payload = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config,
                "size": 14,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": layer,
                    "size": 5,
                }
            ],
        }
    ).encode()
    r = await put(client, "app", "docker", payload, DOCKER_MANIFEST)
    assert r.status_code == 201, r.text
    assert (await client.get("/v2/app/manifests/docker")).headers["Content-Type"] == DOCKER_MANIFEST


async def test_push_by_digest(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "app", None)
    assert (await client.get(f"/v2/app/manifests/{digest}")).status_code == 200
    tags = await client.get("/v2/app/tags/list")
    assert tags.json()["tags"] == []


async def test_digest_in_url_must_match(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    payload = image_manifest((config, 2), [])
    r = await put(client, "app", digest_of(b"other"), payload)
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
    assert (await client.get(f"/v2/app/manifests/{digest_of(payload)}")).status_code == 404


async def test_multi_tag_push(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    payload = image_manifest((config, 2), [])
    digest = digest_of(payload)
    r = await client.put(
        f"/v2/app/manifests/{digest}?tag=a&tag=b&tag=c",
        content=payload,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201
    assert r.headers.get_list("OCI-Tag") == ["a", "b", "c"]
    assert (await client.get("/v2/app/tags/list")).json()["tags"] == ["a", "b", "c"]
    r = await client.put(
        f"/v2/app/manifests/{digest}?tag=ok&tag=bad!tag",
        content=payload,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 400
    assert "ok" not in (await client.get("/v2/app/tags/list")).json()["tags"]


async def test_last_modified_is_the_push_time(client: httpx.AsyncClient) -> None:
    before = int(time.time())
    digest, _ = await push_image(client, "app", "v1")
    for ref in ("v1", digest):
        for method in ("GET", "HEAD"):
            r = await client.request(method, f"/v2/app/manifests/{ref}")
            pushed = parsedate_to_datetime(r.headers["Last-Modified"]).timestamp()
            assert before <= pushed <= time.time() + 1


async def test_tag_moves(client: httpx.AsyncClient) -> None:
    first, _ = await push_image(client, "app", "latest", seed="1")
    second, _ = await push_image(client, "app", "latest", seed="2")
    assert first != second
    r = await client.head("/v2/app/manifests/latest")
    assert r.headers["Docker-Content-Digest"] == second
    assert (await client.head(f"/v2/app/manifests/{first}")).status_code == 200


async def test_missing_blobs_are_refused(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    absent = digest_of(b"not pushed")
    payload = image_manifest((config, 2), [(absent, 10)])
    r = await put(client, "app", "v1", payload)
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    assert absent in r.text
    # A blob of another repository does not count.
    other = await push_blob(client, "other", b"elsewhere")
    r = await put(client, "app", "v1", image_manifest((config, 2), [(other, 9)]))
    assert error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    assert (await client.get("/v2/app/manifests/v1")).status_code == 404


async def test_foreign_layers_may_be_absent(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    doc = json.loads(image_manifest((config, 2), []))
    doc["layers"] = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest_of(b"far away"),
            "size": 8,
            "urls": ["https://example.invalid/layer"],
        }
    ]
    r = await put(client, "app", "foreign", json.dumps(doc).encode())
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("payload", "ctype"),
    [
        (b"not json", OCI_MANIFEST),
        (b"[1,2]", OCI_MANIFEST),
        (b'{"schemaVersion": 2}', OCI_MANIFEST),
        (b'{"schemaVersion": 3, "config": {}, "layers": []}', OCI_MANIFEST),
        (
            b'{"schemaVersion": 2, "mediaType": "' + OCI_INDEX.encode() + b'", "manifests": 1}',
            OCI_INDEX,
        ),
        (
            b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","config":'
            b'{"mediaType":"x","digest":"sha256:zz","size":1},"layers":[]}',
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:'
            + b"a" * 64
            + b'","size":-1},"layers":[]}',
            OCI_MANIFEST,
        ),
        (b'{"schemaVersion":2,"mediaType":"application/x-unknown","layers":[]}', OCI_MANIFEST),
        (b"\xff\xfe", OCI_MANIFEST),
    ],
)
async def test_invalid_manifests(client: httpx.AsyncClient, payload: bytes, ctype: str) -> None:
    r = await put(client, "app", "bad", payload, ctype)
    assert r.status_code == 400, r.text
    assert error_code(r) == "MANIFEST_INVALID"


async def test_media_type_contradicting_content_type(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    r = await put(client, "app", "v1", image_manifest((config, 2), []), DOCKER_MANIFEST)
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_INVALID"
    assert "contradicts" in r.json()["errors"][0]["message"]


async def test_schema1_is_refused_clearly(client: httpx.AsyncClient) -> None:
    payload = json.dumps({"schemaVersion": 1, "name": "app", "tag": "v1", "fsLayers": []}).encode()
    for ctype in (
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/json",
    ):
        r = await put(client, "app", "old", payload, ctype)
        assert r.status_code == 400
        assert error_code(r) == "MANIFEST_INVALID"
        assert "schema 1" in r.json()["errors"][0]["message"]


async def test_oversized_manifest_is_413(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    doc = json.loads(image_manifest((config, 2), []))
    doc["annotations"] = {"pad": "x" * (4 * 1024 * 1024)}
    r = await put(client, "app", "big", json.dumps(doc).encode())
    assert r.status_code == 413
    assert error_code(r) == "MANIFEST_INVALID"


async def test_manifest_just_under_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    doc = json.loads(image_manifest((config, 2), []))
    doc["annotations"] = {"pad": ""}
    base = len(json.dumps(doc).encode())
    doc["annotations"]["pad"] = "x" * (4 * 1024 * 1024 - base)
    payload = json.dumps(doc).encode()
    assert len(payload) == 4 * 1024 * 1024
    assert (await put(client, "app", "big", payload)).status_code == 201


async def index_of(
    client: httpx.AsyncClient, repo: str, children: list[tuple[str, bytes]]
) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": d,
                    "size": len(p),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for (d, p), arch in zip(children, ["amd64", "arm64", "s390x"], strict=False)
            ],
        }
    ).encode()


async def test_index_needs_its_children(client: httpx.AsyncClient) -> None:
    amd = await push_image(client, "multi", None, seed="amd64")
    arm_payload = image_manifest((digest_of(b"x"), 1), [])
    arm = (digest_of(arm_payload), arm_payload)
    index = await index_of(client, "multi", [amd, arm])
    r = await put(client, "multi", "v1", index, OCI_INDEX)
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_BLOB_UNKNOWN"
    arm = await push_image(client, "multi", None, seed="arm64")
    index = await index_of(client, "multi", [amd, arm])
    r = await put(client, "multi", "v1", index, OCI_INDEX)
    assert r.status_code == 201
    got = await client.get("/v2/multi/manifests/v1")
    assert got.content == index
    assert got.headers["Content-Type"] == OCI_INDEX


async def test_docker_manifest_list(client: httpx.AsyncClient) -> None:
    child = await push_image(client, "multi", None)
    doc = json.loads(await index_of(client, "multi", [child]))
    doc["mediaType"] = DOCKER_LIST
    r = await put(client, "multi", "list", json.dumps(doc).encode(), DOCKER_LIST)
    assert r.status_code == 201, r.text


async def test_unknown_manifest_and_repository(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/nothing/manifests/latest")
    assert r.status_code == 404
    assert error_code(r) == "NAME_UNKNOWN"
    await push_image(client, "app", "v1")
    r = await client.get("/v2/app/manifests/v2")
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"
    r = await client.get(f"/v2/app/manifests/{digest_of(b'nope')}")
    assert error_code(r) == "MANIFEST_UNKNOWN"
    assert (await client.head("/v2/app/manifests/v2")).status_code == 404


@pytest.mark.parametrize("ref", ["bad!tag", ".dot", ".INVALID_MANIFEST_NAME", "a" * 129])
async def test_invalid_tag_reference_is_not_found(client: httpx.AsyncClient, ref: str) -> None:
    # A reference that cannot exist is not there: the conformance suite's expectation.
    await push_image(client, "app", "v1")
    r = await client.get(f"/v2/app/manifests/{ref}")
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"
    r = await client.head(f"/v2/app/manifests/{ref}")
    assert r.status_code == 404
    assert r.content == b""
    r = await client.delete(f"/v2/app/manifests/{ref}")
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize("ref", ["bad!tag", ".INVALID_MANIFEST_NAME", "a" * 129])
async def test_push_to_invalid_tag_is_refused(client: httpx.AsyncClient, ref: str) -> None:
    config = await push_blob(client, "app", b"{}")
    r = await client.put(
        f"/v2/app/manifests/{ref}",
        content=image_manifest((config, 2), []),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 400
    assert error_code(r) == "MANIFEST_INVALID"
    assert "tag" in r.json()["errors"][0]["message"]


async def test_delete_by_tag_removes_only_that_tag(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "app", b"{}")
    payload = image_manifest((config, 2), [])
    digest = digest_of(payload)
    await client.put(
        f"/v2/app/manifests/{digest}?tag=a&tag=b",
        content=payload,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert (await client.delete("/v2/app/manifests/a")).status_code == 202
    assert (await client.get("/v2/app/manifests/a")).status_code == 404
    assert (await client.get("/v2/app/manifests/b")).status_code == 200
    assert (await client.get(f"/v2/app/manifests/{digest}")).status_code == 200
    assert (await client.delete("/v2/app/manifests/a")).status_code == 404


async def test_delete_by_digest_removes_manifest_and_tags(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "app", "v1")
    r = await client.delete(f"/v2/app/manifests/{digest}")
    assert r.status_code == 202
    assert (await client.get(f"/v2/app/manifests/{digest}")).status_code == 404
    assert (await client.get("/v2/app/manifests/v1")).status_code == 404
    assert (await client.get("/v2/app/tags/list")).json()["tags"] == []
    r = await client.delete(f"/v2/app/manifests/{digest}")
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"


async def test_subject_and_referrers(client: httpx.AsyncClient) -> None:
    subject, subject_payload = await push_image(client, "app", "v1")
    empty = await push_blob(client, "app", b"{}")
    sig_layer = await push_blob(client, "app", b"signature bytes")
    sbom_layer = await push_blob(client, "app", b"sbom bytes")
    refs = {}
    for kind, layer in (
        ("application/vnd.example.sig", sig_layer),
        ("application/spdx+json", sbom_layer),
    ):
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": kind,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": 10}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(subject_payload)},
            "annotations": {"org.example.kind": kind},
        }
        payload = json.dumps(doc).encode()
        r = await put(client, "app", digest_of(payload), payload)
        assert r.status_code == 201, r.text
        assert r.headers["OCI-Subject"] == subject
        refs[kind] = (digest_of(payload), len(payload))

    r = await client.get(f"/v2/app/referrers/{subject}")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    by_type = {m["artifactType"]: m for m in index["manifests"]}
    assert set(by_type) == set(refs)
    for kind, (digest, size) in refs.items():
        assert by_type[kind] == {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": size,
            "artifactType": kind,
            "annotations": {"org.example.kind": kind},
        }
    r = await client.get(
        f"/v2/app/referrers/{subject}", params={"artifactType": "application/spdx+json"}
    )
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["artifactType"] for m in r.json()["manifests"]] == ["application/spdx+json"]


async def test_subject_may_be_absent(client: httpx.AsyncClient) -> None:
    empty = await push_blob(client, "app", b"{}")
    missing = digest_of(b"not yet pushed")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.example.config", "digest": empty, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 100},
    }
    payload = json.dumps(doc).encode()
    r = await put(client, "app", digest_of(payload), payload)
    assert r.status_code == 201
    r = await client.get(f"/v2/app/referrers/{missing}")
    # Without artifactType the config's media type stands in.
    assert r.json()["manifests"][0]["artifactType"] == "application/vnd.example.config"


async def test_referrers_edge_cases(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/v2/nothing/referrers/{digest_of(b'x')}")
    assert r.status_code == 200
    assert r.json()["manifests"] == []
    r = await client.get("/v2/app/referrers/sha256:short")
    assert r.status_code == 400
    assert error_code(r) == "DIGEST_INVALID"
