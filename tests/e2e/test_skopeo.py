"""skopeo against every registry: what a registry must do for the most common copy tool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.clients import Skopeo
from tests.helpers.http_api import ApiClient
from tests.helpers.oci import OCI_INDEX, Layout, LayoutImage, sha256
from tests.helpers.servers import ServerProcess

pytestmark = pytest.mark.e2e


def same_blobs(original: LayoutImage, copy_dir: Path, copy_tag: str) -> None:
    """The copy references the same digests as the original, and holds the same bytes."""
    source, copy = Layout(original.layout), Layout(copy_dir)
    digests = source.referenced_blobs(original.tag)
    assert copy.referenced_blobs(copy_tag) == digests
    for digest in digests:
        assert copy.read_blob(digest) == source.read_blob(digest)


def test_copy_to_registry_and_back(
    registry_server: ServerProcess, skopeo: Skopeo, oci_image: LayoutImage, tmp_path: Path
) -> None:
    remote = f"docker://{registry_server.host}/e2e/image:v1"
    skopeo.copy(oci_image.ref, remote)

    raw = skopeo.inspect_raw(remote)
    assert sha256(raw) == oci_image.digest
    assert raw == Layout(oci_image.layout).read_blob(oci_image.digest)

    skopeo.copy(remote, f"oci:{tmp_path / 'back'}:v1")
    back = Layout(tmp_path / "back").resolve("v1")
    assert back["digest"] == oci_image.digest
    same_blobs(oci_image, tmp_path / "back", "v1")


def test_copy_all_of_a_multiplatform_index(
    registry_server: ServerProcess,
    skopeo: Skopeo,
    oci_index: tuple[LayoutImage, list[LayoutImage]],
    tmp_path: Path,
) -> None:
    index, images = oci_index
    remote = f"docker://{registry_server.host}/e2e/multi"
    skopeo.copy(index.ref, f"{remote}:latest", "--all")

    raw = skopeo.inspect_raw(f"{remote}:latest")
    assert sha256(raw) == index.digest
    assert json.loads(raw)["mediaType"] == OCI_INDEX
    for image in images:
        child = skopeo.inspect_raw(f"{remote}@{image.digest}")
        assert sha256(child) == image.digest

    # skopeo reports the index's digest but the chosen image's config and layers.
    arm = skopeo.inspect(f"{remote}:latest", "--override-arch", "arm64")
    arm_image = next(i for i in images if i.tag.endswith("arm64"))
    arm_manifest = Layout(index.layout).manifest(arm_image.digest)
    assert arm["Architecture"] == "arm64"
    assert arm["Layers"] == [layer["digest"] for layer in arm_manifest["layers"]]

    skopeo.copy(f"{remote}:latest", f"oci:{tmp_path / 'back'}:multi", "--all")
    same_blobs(index, tmp_path / "back", "multi")


def test_inspect(registry_server: ServerProcess, skopeo: Skopeo, oci_image: LayoutImage) -> None:
    remote = f"docker://{registry_server.host}/e2e/inspected:v1"
    skopeo.copy(oci_image.ref, remote)
    layout = Layout(oci_image.layout)
    manifest = layout.manifest(oci_image.digest)

    info = skopeo.inspect(remote)
    assert info["Digest"] == oci_image.digest
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["Labels"] == {"org.opencontainers.image.title": "regd e2e"}
    assert info["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert "v1" in info["RepoTags"]

    config = skopeo("inspect", "--tls-verify=false", "--config", "--raw", remote).encode()
    assert sha256(config) == manifest["config"]["digest"]
    assert json.loads(config)["config"]["Entrypoint"] == ["/bin/true"]


def test_list_tags(registry_server: ServerProcess, skopeo: Skopeo, oci_image: LayoutImage) -> None:
    repo = f"docker://{registry_server.host}/e2e/tagged"
    tags = ["v2", "latest", "1.0.0", "v10", "A_tag"]
    for tag in tags:
        skopeo.copy(oci_image.ref, f"{repo}:{tag}")
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", repo))
    assert sorted(listed["Tags"]) == sorted(tags)
    assert listed["Repository"].endswith("/e2e/tagged")


def test_list_tags_of_unknown_repository_fails(
    registry_server: ServerProcess, skopeo: Skopeo
) -> None:
    with pytest.raises(AssertionError, match=r"(?i)unknown|not found|404"):
        skopeo(
            "list-tags", "--tls-verify=false", f"docker://{registry_server.host}/e2e/nothing-here"
        )


def test_delete_removes_the_manifest_and_its_tags(
    registry_server: ServerProcess, skopeo: Skopeo, oci_image: LayoutImage, http: ApiClient
) -> None:
    repo = f"docker://{registry_server.host}/e2e/deleted"
    skopeo.copy(oci_image.ref, f"{repo}:one")
    skopeo.copy(oci_image.ref, f"{repo}:two")
    # A second, different image in the same repository must survive the delete.
    _, survivor = http.push_tiny_image("e2e/deleted", "other", payload=b"survivor layer")

    skopeo("delete", "--tls-verify=false", f"{repo}:one")

    gone = http.http.get(f"/v2/e2e/deleted/manifests/{oci_image.digest}")
    assert gone.status_code == 404, gone.text
    for tag in ("one", "two"):
        answer = http.http.get(f"/v2/e2e/deleted/manifests/{tag}")
        assert answer.status_code == 404, f"tag {tag} survived: {answer.status_code}"
    assert set(http.tags("e2e/deleted")) == {"other"}
    assert http.get_manifest("e2e/deleted", "other").content == survivor


def test_sync_registry_to_dir_and_back(
    registry_server: ServerProcess, skopeo: Skopeo, oci_image: LayoutImage, tmp_path: Path
) -> None:
    for tag in ("v1", "v2"):
        skopeo.copy(oci_image.ref, f"docker://{registry_server.host}/e2e/synced:{tag}")
    out = tmp_path / "sync"
    skopeo(
        "sync",
        "--src",
        "docker",
        "--dest",
        "dir",
        "--src-tls-verify=false",
        f"{registry_server.host}/e2e/synced",
        str(out),
    )
    for tag in ("v1", "v2"):
        manifest = (out / f"synced:{tag}" / "manifest.json").read_bytes()
        assert sha256(manifest) == oci_image.digest

    skopeo(
        "sync",
        "--src",
        "dir",
        "--dest",
        "docker",
        "--dest-tls-verify=false",
        "--preserve-digests",
        str(out / "synced:v2"),
        f"{registry_server.host}/e2e/restored",
    )
    remote = f"docker://{registry_server.host}/e2e/restored/synced:v2"
    assert sha256(skopeo.inspect_raw(remote)) == oci_image.digest
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", remote.rsplit(":", 1)[0]))
    assert listed["Tags"] == ["v2"]
