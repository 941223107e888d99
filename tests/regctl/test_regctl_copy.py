"""regctl copy between two independent Distribution registries, both ways."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import trio

from regd.client import MONOLITHIC_LIMIT, BlobOutcome, CopyOptions, RegistryClient, copy
from regd.oci import mediatypes as mt
from regd.oci.digest import Digest
from regd.oci.reference import Reference
from tests.helpers.servers import DistributionServer, ServerProcess
from tests.regctl import support as content
from tests.regctl.support import CliResult

Cli = Callable[..., CliResult]


async def _manifest_bytes(host: str, repository: str, identifier: str | Digest) -> bytes:
    async with RegistryClient() as client:
        if isinstance(identifier, Digest):
            target = Reference(host, repository, None, identifier)
        else:
            target = Reference(host, repository, identifier)
        return (await client.get_manifest(target)).data


async def _has_blob(host: str, repository: str, digest: str) -> bool:
    async with RegistryClient() as client:
        size = await client.blob_size(Reference(host, repository, None, Digest.parse(digest)))
        return size is not None


def manifest_bytes(host: str, repository: str, identifier: str | Digest) -> bytes:
    return trio.run(_manifest_bytes, host, repository, identifier)


def has_blob(host: str, repository: str, digest: str) -> bool:
    return trio.run(_has_blob, host, repository, digest)


def test_copy_image_both_ways(cli: Cli, registry_pair: tuple[ServerProcess, ServerProcess]) -> None:
    src, dst = registry_pair
    big_layer = os.urandom(MONOLITHIC_LIMIT + 654_321)

    async def build() -> content.Pushed:
        async with RegistryClient() as client:
            return await content.push_image(
                client, src.host, "library/app", "1.0", layers=[b"small layer", big_layer]
            )

    image = trio.run(build)
    result = cli("copy", f"{src.host}/library/app:1.0", f"{dst.host}/mirror/app", "--json")
    assert result.code == 0, result
    report = result.json()
    assert report["source"] == f"{src.host}/library/app:1.0"
    assert report["destination"] == f"{dst.host}/mirror/app:1.0"
    assert report["digest"] == report["sourceDigest"] == str(image.digest)
    assert report["mediaType"] == mt.OCI_MANIFEST
    assert report["filtered"] is False
    assert report["manifests"] == 1
    assert report["blobs"] == {"copied": 3, "skipped": 0, "mounted": 0}
    assert report["bytesCopied"] == sum(
        d["size"] for d in [json.loads(image.data)["config"], *json.loads(image.data)["layers"]]
    )
    assert manifest_bytes(dst.host, "mirror/app", "1.0") == image.data
    layer_digest = json.loads(image.data)["layers"][1]["digest"]

    async def read_back() -> bytes:
        async with RegistryClient() as client:
            ref = Reference(dst.host, "mirror/app", None, Digest.parse(layer_digest))
            return await client.get_blob(ref)

    assert trio.run(read_back) == big_layer

    again = cli("copy", f"{src.host}/library/app:1.0", f"{dst.host}/mirror/app", "--json")
    assert again.json()["blobs"]["copied"] == 0


def test_copy_whole_index_keeps_it_byte_identical(
    cli: Cli, registry_pair: tuple[ServerProcess, ServerProcess]
) -> None:
    registry_server, second_registry = registry_pair

    async def build() -> tuple[content.Pushed, list[content.Pushed]]:
        async with RegistryClient() as client:
            return await content.push_index(client, registry_server.host, "multi", "v2")

    index, children = trio.run(build)
    result = cli(
        "copy", f"{registry_server.host}/multi:v2", f"{second_registry.host}/multi", "--json"
    )
    assert result.code == 0, result
    report = result.json()
    assert report["digest"] == str(index.digest)
    assert report["manifests"] == 1 + len(children)
    assert report["blobs"]["copied"] == 2 * len(children)
    assert manifest_bytes(second_registry.host, "multi", "v2") == index.data
    for child in children:
        assert manifest_bytes(second_registry.host, "multi", child.digest) == child.data


def test_copy_with_platform_filter_pushes_a_new_index(
    cli: Cli, registry_pair: tuple[ServerProcess, ServerProcess]
) -> None:
    registry_server, second_registry = registry_pair

    async def build() -> tuple[content.Pushed, list[content.Pushed]]:
        async with RegistryClient() as client:
            return await content.push_index(client, registry_server.host, "multi", "v2")

    index, (amd64, arm64, s390x) = trio.run(build)
    result = cli(
        "copy",
        f"{registry_server.host}/multi:v2",
        f"{second_registry.host}/slim:v2",
        "--platform",
        "linux/arm64",
        "--platform",
        "linux/s390x",
        "--keep-index",
        "--json",
    )
    assert result.code == 0, result
    report = result.json()
    assert report["filtered"] is True
    assert report["platforms"] == ["linux/arm64/v8", "linux/s390x"]
    assert report["sourceDigest"] == str(index.digest)
    assert report["digest"] != str(index.digest)
    pushed = json.loads(manifest_bytes(second_registry.host, "slim", "v2"))
    assert Digest.of(manifest_bytes(second_registry.host, "slim", "v2")) == Digest.parse(
        report["digest"]
    )
    assert [m["digest"] for m in pushed["manifests"]] == [str(arm64.digest), str(s390x.digest)]
    assert pushed["mediaType"] == mt.OCI_INDEX
    assert manifest_bytes(second_registry.host, "slim", arm64.digest) == arm64.data
    amd64_config = json.loads(amd64.data)["config"]["digest"]
    assert not has_blob(second_registry.host, "slim", amd64_config)

    human = cli(
        "copy", f"{registry_server.host}/multi:v2", f"{second_registry.host}/slim:v3",
        "--platform", "linux/arm64", "--keep-index",
    )  # fmt: skip
    assert "new index" in human.out
    several = cli(
        "copy", f"{registry_server.host}/multi:v2", f"{second_registry.host}/slim:v3",
        "--platform", "linux/arm64", "--platform", "linux/s390x",
    )  # fmt: skip
    assert several.code == 2
    assert "--keep-index" in several.err
    nothing = cli(
        "copy", f"{registry_server.host}/multi:v2", f"{second_registry.host}/slim:v4",
        "--platform", "windows/amd64",
    )  # fmt: skip
    assert nothing.code == 1
    assert "windows/amd64" in nothing.err


def test_copy_with_one_platform_copies_that_manifest_itself(
    cli: Cli, registry_pair: tuple[ServerProcess, ServerProcess]
) -> None:
    registry_server, second_registry = registry_pair

    async def build() -> tuple[content.Pushed, list[content.Pushed]]:
        async with RegistryClient() as client:
            return await content.push_index(client, registry_server.host, "multi", "v2")

    index, (amd64, arm64, _) = trio.run(build)
    result = cli(
        "copy", f"{registry_server.host}/multi:v2", f"{second_registry.host}/arm:v2",
        "--platform", "linux/arm64", "--json",
    )  # fmt: skip
    assert result.code == 0, result
    report = result.json()
    # As regclient and crane do: the platform's manifest, byte for byte, under the tag.
    assert report["digest"] == str(arm64.digest)
    assert report["indexDigest"] == str(index.digest)
    assert report["platforms"] == ["linux/arm64/v8"]
    assert report["filtered"] is False
    assert manifest_bytes(second_registry.host, "arm", "v2") == arm64.data
    assert not has_blob(second_registry.host, "arm", json.loads(amd64.data)["config"]["digest"])
    human = cli(
        "copy", f"{registry_server.host}/multi:v2", f"{second_registry.host}/arm:v3",
        "--platform", "linux/arm64",
    )  # fmt: skip
    assert f"platform linux/arm64/v8 of index {index.digest}" in human.out
    assert "new index" not in human.out


def test_copy_artifact_with_referrers(
    cli: Cli, registry_pair: tuple[ServerProcess, ServerProcess]
) -> None:
    src, dst = registry_pair

    async def build() -> tuple[content.Pushed, content.Pushed, content.Pushed]:
        async with RegistryClient() as client:
            image = await content.push_image(client, src.host, "signed", "v1")
            sbom = await content.push_artifact(client, src.host, "signed", image)
            signature = await content.push_artifact(
                client, src.host, "signed", sbom, artifact_type=content.SIGNATURE_TYPE
            )
            return image, sbom, signature

    image, sbom, signature = trio.run(build)
    plain = cli("copy", f"{src.host}/signed:v1", f"{dst.host}/plain:v1", "--json")
    assert plain.json()["referrers"] == 0
    inspected = cli("inspect", f"{dst.host}/plain:v1", "--json").json()
    assert inspected["referrers"] == []

    result = cli("copy", f"{src.host}/signed:v1", f"{dst.host}/signed:v1", "--referrers", "--json")
    assert result.code == 0, result
    report = result.json()
    assert report["referrers"] == 2
    assert report["manifests"] == 3
    assert manifest_bytes(dst.host, "signed", sbom.digest) == sbom.data
    assert manifest_bytes(dst.host, "signed", signature.digest) == signature.data
    doc = cli("inspect", f"{dst.host}/signed:v1", "--json").json()
    assert [r["digest"] for r in doc["referrers"]] == [str(sbom.digest)]
    assert doc["referrers"][0]["artifactType"] == content.SBOM_TYPE
    nested = cli("inspect", f"{dst.host}/signed@{sbom.digest}", "--json").json()
    assert [r["digest"] for r in nested["referrers"]] == [str(signature.digest)]
    assert nested["subject"]["digest"] == str(image.digest)

    # An artifact on its own, by digest: pushed by digest, nothing tagged.
    alone = cli("copy", f"{src.host}/signed@{sbom.digest}", f"{dst.host}/alone", "--json")
    assert alone.json()["destination"] == f"{dst.host}/alone@{sbom.digest}"
    assert manifest_bytes(dst.host, "alone", sbom.digest) == sbom.data


def test_copy_all_tags(cli: Cli, registry_pair: tuple[ServerProcess, ServerProcess]) -> None:
    registry_server, second_registry = registry_pair

    async def build() -> list[content.Pushed]:
        async with RegistryClient() as client:
            shared = b"shared base layer" * 100
            return [
                await content.push_image(
                    client, registry_server.host, "repo", tag, layers=[shared, tag.encode()]
                )
                for tag in ("a", "b", "c")
            ]

    images = trio.run(build)
    result = cli(
        "copy",
        f"{registry_server.host}/repo",
        f"{second_registry.host}/copy",
        "--all-tags",
        "--json",
    )
    assert result.code == 0, result
    reports = result.json()
    assert sorted(r["destination"] for r in reports) == [
        f"{second_registry.host}/copy:{t}" for t in ("a", "b", "c")
    ]
    # The shared layer travels once.
    assert sum(r["blobs"]["copied"] for r in reports) == 1 + 3 + 3
    for tag, image in zip(("a", "b", "c"), images, strict=True):
        assert manifest_bytes(second_registry.host, "copy", tag) == image.data


def test_all_tags_with_referrers_moves_fallback_tags_as_referrers(
    cli: Cli, registry_pair: tuple[ServerProcess, ServerProcess]
) -> None:
    src, dst = registry_pair

    async def build() -> tuple[content.Pushed, content.Pushed]:
        async with RegistryClient() as client:
            image = await content.push_image(client, src.host, "signed", "v1")
            sbom = await content.push_artifact(client, src.host, "signed", image)
            return image, sbom

    image, sbom = trio.run(build)
    fallback = f"sha256-{image.digest.hex}"

    async def state(host: str) -> tuple[list[str], list[str], str]:
        async with RegistryClient() as client:
            tags = await client.tags(Reference(host, "signed"))
            found = await client.referrers(Reference(host, "signed", None, image.digest))
            return sorted(tags), [str(d.digest) for d in found.descriptors], found.source

    src_tags, _, src_source = trio.run(state, src.host)
    result = cli(
        "copy", f"{src.host}/signed", f"{dst.host}/signed", "--all-tags", "--referrers", "--json"
    )
    assert result.code == 0, result
    tags, referrers, source = trio.run(state, dst.host)
    assert referrers == [str(sbom.digest)]
    # Where the destination indexes referrers itself they arrive as referrers only; where
    # it does not, the fallback tag is how its clients find them, so it stays.
    expected = ["v1"] if source == "api" else sorted(["v1", fallback])
    assert tags == expected
    if src_source == "tag-schema":
        assert fallback in src_tags
        assert all(r["destination"] != f"{dst.host}/signed:{fallback}" for r in result.json())


def test_copy_within_a_registry_mounts(cli: Cli, registry_server: ServerProcess) -> None:
    async def build() -> content.Pushed:
        async with RegistryClient() as client:
            return await content.push_image(client, registry_server.host, "origin", "v1")

    trio.run(build)
    result = cli(
        "copy", f"{registry_server.host}/origin:v1", f"{registry_server.host}/fork:v1", "--json"
    )
    assert result.code == 0, result
    assert result.json()["blobs"] == {"copied": 0, "skipped": 0, "mounted": 2}


def test_interrupted_copy_resumes_without_resending(
    registry_pair: tuple[ServerProcess, ServerProcess],
) -> None:
    registry_server, second_registry = registry_pair
    layers = [os.urandom(2000), os.urandom(3000), os.urandom(MONOLITHIC_LIMIT + 10)]

    class Recorder:
        def __init__(self) -> None:
            self.outcomes: dict[Digest, BlobOutcome] = {}
            self.sent: dict[Digest, int] = {}

        def blob_started(self, digest: Digest, size: int) -> None:
            self.sent[digest] = 0

        def blob_advanced(self, digest: Digest, nbytes: int) -> None:
            self.sent[digest] += nbytes

        def blob_finished(self, digest: Digest, size: int, outcome: BlobOutcome) -> None:
            self.outcomes[digest] = outcome

    async def scenario() -> None:
        async with RegistryClient() as client:
            image = await content.push_image(
                client, registry_server.host, "big", "v1", layers=layers
            )
            # What a first, interrupted run had already delivered.
            for layer in layers[:2]:
                await content.push_blob(client, second_registry.host, "big", layer)
            recorder = Recorder()
            report = await copy(
                client,
                Reference(registry_server.host, "big", "v1"),
                Reference(second_registry.host, "big"),
                CopyOptions(progress=recorder),
            )
            assert report.digest == image.digest
            assert (report.blobs_copied, report.blobs_skipped) == (2, 2)
            assert recorder.outcomes[Digest.of(layers[0])] == "skipped"
            assert recorder.outcomes[Digest.of(layers[2])] == "copied"
            assert recorder.sent == {
                Digest.of(layers[2]): len(layers[2]),
                Digest.parse(json.loads(image.data)["config"]["digest"]): json.loads(image.data)[
                    "config"
                ]["size"],
            }

    trio.run(scenario)


def test_corrupt_source_blob_is_not_committed(
    cli: Cli, distribution_registry: DistributionServer, regd_registry: ServerProcess
) -> None:
    registry_server, second_registry = distribution_registry, regd_registry
    layer = os.urandom(MONOLITHIC_LIMIT + 100)

    async def build() -> content.Pushed:
        async with RegistryClient() as client:
            return await content.push_image(
                client, registry_server.host, "rotten", "v1", layers=[layer]
            )

    trio.run(build)
    digest = Digest.of(layer)
    # Flip bytes in Distribution's own storage: it serves them without checking.
    data_file = (
        registry_server.root
        / "docker/registry/v2/blobs/sha256"
        / digest.hex[:2]
        / digest.hex
        / "data"
    )
    data_file.write_bytes(b"\0" * len(layer))
    result = cli("copy", f"{registry_server.host}/rotten:v1", f"{second_registry.host}/rotten")
    assert result.code == 1
    assert result.err.startswith("regctl: error: ")
    assert str(digest) in result.err
    assert not has_blob(second_registry.host, "rotten", str(digest))


def test_copy_missing_source(cli: Cli, registry_pair: tuple[ServerProcess, ServerProcess]) -> None:
    registry_server, second_registry = registry_pair
    result = cli("copy", f"{registry_server.host}/ghost:v1", f"{second_registry.host}/ghost")
    assert result.code == 1
    assert "HTTP 404" in result.err
    assert "_UNKNOWN" in result.err
