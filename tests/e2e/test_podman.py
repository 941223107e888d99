"""podman against every registry: pull, push under a new name, pull that back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.clients import Podman, Skopeo
from tests.helpers.oci import Layout, LayoutImage, sha256
from tests.helpers.servers import ServerProcess

pytestmark = pytest.mark.e2e


def test_pull_push_pull(
    registry_server: ServerProcess,
    skopeo: Skopeo,
    podman: Podman,
    oci_image: LayoutImage,
    tmp_path: Path,
) -> None:
    source = f"{registry_server.host}/e2e/podman-source:v1"
    skopeo.copy(oci_image.ref, f"docker://{source}")
    config_digest = Layout(oci_image.layout).manifest(oci_image.digest)["config"]["digest"]

    podman("pull", "--tls-verify=false", source)
    image_id = podman("image", "inspect", "--format", "{{.Id}}", source).strip()
    # An image's ID is its config digest: proof the config came through untouched.
    assert f"sha256:{image_id}" == config_digest

    pushed = f"{registry_server.host}/e2e/podman-pushed:v2"
    digest_file = tmp_path / "pushed.digest"
    podman("push", "--tls-verify=false", "--digestfile", str(digest_file), source, pushed)
    pushed_digest = digest_file.read_text().strip()
    raw = skopeo.inspect_raw(f"docker://{pushed}")
    assert sha256(raw) == pushed_digest

    podman.reset()
    podman("pull", "--tls-verify=false", pushed)
    assert podman("image", "inspect", "--format", "{{.Id}}", pushed).strip() == image_id
    assert podman("image", "inspect", "--format", "{{.Digest}}", pushed).strip() == pushed_digest


def test_pull_by_platform(
    registry_server: ServerProcess,
    skopeo: Skopeo,
    podman: Podman,
    oci_index: tuple[LayoutImage, list[LayoutImage]],
) -> None:
    index, images = oci_index
    remote = f"{registry_server.host}/e2e/podman-multi:latest"
    skopeo.copy(index.ref, f"docker://{remote}", "--all")
    layout = Layout(index.layout)
    for image in images:
        architecture = image.tag.rsplit("-", 1)[1]
        podman("pull", "--tls-verify=false", "--platform", f"linux/{architecture}", remote)
        image_id = podman("image", "inspect", "--format", "{{.Id}}", remote).strip()
        assert f"sha256:{image_id}" == layout.manifest(image.digest)["config"]["digest"]
