"""The registry client against a real Distribution registry."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regd.client import (
    MONOLITHIC_LIMIT,
    ConnectError,
    CredentialStore,
    DigestMismatchError,
    NotFoundError,
    RegistryClient,
    UnsupportedError,
    is_loopback,
)
from regd.client.auth import Credentials, normalize_host, parse_challenges
from regd.oci import mediatypes as mt
from regd.oci.digest import Digest
from regd.oci.reference import Reference
from tests.helpers.servers import DistributionServer, ServerProcess
from tests.regctl import support as content


def ref(
    registry_server: ServerProcess, repository: str, identifier: str | Digest | None = None
) -> Reference:
    if isinstance(identifier, Digest):
        return Reference(registry_server.host, repository, None, identifier)
    return Reference(registry_server.host, repository, identifier)


async def test_small_and_large_blobs_round_trip(registry_server: ServerProcess) -> None:
    small = os.urandom(1000)
    large = os.urandom(MONOLITHIC_LIMIT + 123_457)
    async with RegistryClient() as client:
        for data in (small, large):
            digest = Digest.of(data)
            assert await client.blob_size(ref(registry_server, "blobs", digest)) is None

            async def chunks(payload: bytes = data) -> AsyncIterator[bytes]:
                for start in range(0, len(payload), 65536):
                    yield payload[start : start + 65536]

            await client.push_blob(ref(registry_server, "blobs", digest), chunks(), len(data))
            assert await client.blob_size(ref(registry_server, "blobs", digest)) == len(data)
            assert await client.get_blob(ref(registry_server, "blobs", digest)) == data


async def test_push_refuses_content_that_does_not_match_its_digest(
    registry_server: ServerProcess,
) -> None:
    claimed = Digest.of(b"what was promised")
    async with RegistryClient() as client:
        with pytest.raises(DigestMismatchError):
            await client.push_blob(ref(registry_server, "blobs", claimed), b"something else")

        big = os.urandom(MONOLITHIC_LIMIT + 1)

        async def stream() -> AsyncIterator[bytes]:
            yield big

        with pytest.raises(DigestMismatchError):
            await client.push_blob(ref(registry_server, "blobs", claimed), stream(), len(big))
        assert await client.blob_size(ref(registry_server, "blobs", claimed)) is None


async def test_manifests_tags_catalog_and_pagination(registry_server: ServerProcess) -> None:
    async with RegistryClient() as client:
        names = [f"team/app{i}" for i in range(5)]
        for name in names:
            await content.push_image(client, registry_server.host, name, "v1")
        image = await content.push_image(client, registry_server.host, "team/app0", "v2")
        # Distribution pages the catalog: three requests of two names each.
        assert await client.catalog(registry_server.host, page_size=2) == sorted(names)
        assert sorted(await client.tags(ref(registry_server, "team/app0"))) == ["v1", "v2"]

        info = await client.head_manifest(ref(registry_server, "team/app0", "v2"))
        assert info is not None
        assert (info.digest, info.media_type, info.size) == (
            image.digest,
            mt.OCI_MANIFEST,
            image.size,
        )
        fetched = await client.get_manifest(ref(registry_server, "team/app0", image.digest))
        assert fetched.data == image.data
        assert await client.head_manifest(ref(registry_server, "team/app0", "nope")) is None
        with pytest.raises(NotFoundError) as caught:
            await client.get_manifest(ref(registry_server, "team/app0", "nope"))
        assert caught.value.status == 404
        assert caught.value.code == "MANIFEST_UNKNOWN"
        with pytest.raises(NotFoundError) as missing_repo:
            await client.tags(ref(registry_server, "missing"))
        assert missing_repo.value.code == "NAME_UNKNOWN"


async def test_delete_by_digest_and_tag_refusal(distribution_registry: DistributionServer) -> None:
    registry_server = distribution_registry
    async with RegistryClient() as client:
        image = await content.push_image(client, registry_server.host, "app", "v1")
        with pytest.raises(UnsupportedError) as caught:
            await client.delete_manifest(ref(registry_server, "app", "v1"))
        assert "cannot delete a tag" in str(caught.value)
        await client.delete_manifest(ref(registry_server, "app", image.digest))
        assert await client.head_manifest(ref(registry_server, "app", image.digest)) is None


async def test_mount_between_repositories(registry_server: ServerProcess) -> None:
    async with RegistryClient() as client:
        digest = await content.push_blob(client, registry_server.host, "src", b"shared layer")
        assert await client.mount_blob(ref(registry_server, "dst", digest), "src")
        assert await client.blob_size(ref(registry_server, "dst", digest)) == len(b"shared layer")
        unknown = Digest.of(b"nowhere")
        assert not await client.mount_blob(ref(registry_server, "dst", unknown), "src")


async def test_referrers_fall_back_to_the_tag_schema(
    distribution_registry: DistributionServer,
) -> None:
    registry_server = distribution_registry
    async with RegistryClient() as client:
        image = await content.push_image(client, registry_server.host, "app", "v1")
        before = await client.referrers(ref(registry_server, "app", image.digest))
        assert (before.descriptors, before.source) == ((), "tag-schema")
        sbom = await content.push_artifact(client, registry_server.host, "app", image)
        sig = await content.push_artifact(
            client, registry_server.host, "app", image, artifact_type=content.SIGNATURE_TYPE
        )
        found = await client.referrers(ref(registry_server, "app", image.digest))
        assert found.source == "tag-schema"
        assert {d.digest for d in found.descriptors} == {sbom.digest, sig.digest}
        only = await client.referrers(
            ref(registry_server, "app", image.digest), artifact_type=content.SIGNATURE_TYPE
        )
        assert [d.digest for d in only.descriptors] == [sig.digest]


async def test_unreachable_registry_is_a_connect_error() -> None:
    async with RegistryClient() as client:
        with pytest.raises(ConnectError) as caught:
            await client.ping("127.0.0.1:1")
    assert "connection refused" in str(caught.value)
    assert "http://127.0.0.1:1/v2/" in str(caught.value)


def test_hosts_and_challenges() -> None:
    assert is_loopback("localhost:5000")
    assert is_loopback("127.0.0.1:5000")
    assert is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com")
    assert normalize_host("https://index.docker.io/v1/") == "docker.io"
    assert normalize_host("http://Registry.Example.com:5000/") == "registry.example.com:5000"
    (bearer, basic) = parse_challenges(
        'Bearer realm="https://auth.example.com/token",service="reg",'
        'scope="repository:a/b:pull,push", Basic realm="x"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example.com/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    assert basic.scheme == "basic"


def test_credential_store_reads_what_docker_and_podman_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CredentialStore()
    store.save("registry.example.com:5000", Credentials("alice", "s3cret"))
    assert store.get("registry.example.com:5000") == Credentials("alice", "s3cret")
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert store.remove("registry.example.com:5000")
    assert store.get("registry.example.com:5000") is None

    podman = tmp_path / "auth.json"
    podman.write_text('{"auths": {"https://quay.example.org": {"auth": "Ym9iOnB3"}}}')
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman))
    assert CredentialStore().get("quay.example.org") == Credentials("bob", "pw")
