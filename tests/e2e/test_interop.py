"""regd and the reference registry exchange images without changing a byte."""

from __future__ import annotations

import pytest

from tests.helpers.clients import Skopeo
from tests.helpers.http_api import ApiClient
from tests.helpers.oci import Layout, LayoutImage, sha256
from tests.helpers.servers import DistributionServer, RegdServer

pytestmark = pytest.mark.e2e


def assert_identical(first: str, second: str, repo: str, layout: Layout, tag: str) -> None:
    """Both registries serve every manifest and blob of `tag` with the original bytes."""
    manifests, blobs = layout.reachable(tag)
    with ApiClient(first) as a, ApiClient(second) as b:
        for digest in manifests:
            original = layout.read_blob(digest)
            got_a = a.get_manifest(repo, digest)
            got_b = b.get_manifest(repo, digest)
            assert got_a.content == got_b.content == original
            assert got_a.headers["docker-content-digest"] == digest
            assert got_b.headers["docker-content-digest"] == digest
            assert got_a.headers["content-type"] == got_b.headers["content-type"]
        for digest in blobs:
            assert a.get_blob(repo, digest) == b.get_blob(repo, digest) == layout.read_blob(digest)


def test_distribution_to_regd(
    distribution: DistributionServer,
    regd_server: RegdServer,
    skopeo: Skopeo,
    oci_index: tuple[LayoutImage, list[LayoutImage]],
) -> None:
    index, _ = oci_index
    skopeo.copy(index.ref, f"docker://{distribution.host}/interop/multi:1", "--all")
    skopeo.copy(
        f"docker://{distribution.host}/interop/multi:1",
        f"docker://{regd_server.host}/interop/multi:1",
        "--all",
    )
    raw = skopeo.inspect_raw(f"docker://{regd_server.host}/interop/multi:1")
    assert sha256(raw) == index.digest
    assert_identical(
        distribution.url, regd_server.url, "interop/multi", Layout(index.layout), index.tag
    )


def test_regd_to_distribution(
    distribution: DistributionServer,
    regd_server: RegdServer,
    skopeo: Skopeo,
    oci_index: tuple[LayoutImage, list[LayoutImage]],
    oci_image: LayoutImage,
) -> None:
    index, _ = oci_index
    skopeo.copy(index.ref, f"docker://{regd_server.host}/interop/multi:1", "--all")
    skopeo.copy(oci_image.ref, f"docker://{regd_server.host}/interop/multi:single")
    for tag in ("1", "single"):
        skopeo.copy(
            f"docker://{regd_server.host}/interop/multi:{tag}",
            f"docker://{distribution.host}/interop/multi:{tag}",
            "--all",
        )
    assert sha256(skopeo.inspect_raw(f"docker://{distribution.host}/interop/multi:1")) == (
        index.digest
    )
    assert sha256(skopeo.inspect_raw(f"docker://{distribution.host}/interop/multi:single")) == (
        oci_image.digest
    )
    for image in (index, oci_image):
        assert_identical(
            regd_server.url,
            distribution.url,
            "interop/multi",
            Layout(image.layout),
            image.tag,
        )
