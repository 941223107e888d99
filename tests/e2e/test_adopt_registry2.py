"""Adopting a storage root written by Distribution 2.8.2 (the Debian docker-registry).

skopeo pushes an image and a multi-platform index into Distribution; regd then imports the
root, once in place (regd's storage root is Distribution's: no byte copied) and once into
a separate data dir (blobs copied and verified). Afterwards regd serves every repository,
tag and manifest Distribution served, with identical digests and bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RegdFactory
from tests.helpers.clients import Skopeo
from tests.helpers.oci import LayoutImage
from tests.helpers.servers import DistributionServer, ServerProcess

pytestmark = pytest.mark.e2e

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def contents(server: ServerProcess) -> dict[str, Any]:
    """Every repository, tag and manifest a registry serves, with manifest bytes."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for repo in client.get("/v2/_catalog").json()["repositories"]:
            tags = client.get(f"/v2/{repo}/tags/list").json()["tags"] or []
            for tag in sorted(tags):
                r = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
                assert r.status_code == 200, (repo, tag, r.text)
                out[f"{repo}:{tag}"] = (r.headers["Docker-Content-Digest"], r.content)
    return out


def blobs_of(payload: bytes) -> list[str]:
    doc = json.loads(payload)
    if "manifests" in doc:
        return []
    return [doc["config"]["digest"]] + [layer["digest"] for layer in doc["layers"]]


def check_pulls(server: ServerProcess, expected: dict[str, Any]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, (digest, payload) in expected.items():
            repo, tag = name.rsplit(":", 1)
            r = client.get(f"/v2/{repo}/manifests/{tag}")
            assert r.status_code == 200, (name, r.text)
            assert r.headers["Docker-Content-Digest"] == digest
            assert r.content == payload
            for blob in blobs_of(payload):
                b = client.get(f"/v2/{repo}/blobs/{blob}")
                assert b.status_code == 200, (name, blob)
                assert "sha256:" + hashlib.sha256(b.content).hexdigest() == blob


def populate(
    distribution: DistributionServer, skopeo: Skopeo, image: LayoutImage, index: LayoutImage
) -> None:
    skopeo.copy(image.ref, f"docker://{distribution.host}/team/app:v1")
    skopeo.copy(image.ref, f"docker://{distribution.host}/team/app:stable")
    skopeo.copy(index.ref, f"docker://{distribution.host}/multi:latest", "--all")


def import_root(server: ServerProcess, root: Path) -> dict[str, Any]:
    r = httpx.post(f"{server.url}/admin/v1/import-registry2", json={"root": str(root)}, timeout=120)
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    return report


def test_adopt_in_place_and_by_copy(
    distribution: DistributionServer,
    regd_factory: RegdFactory,
    skopeo: Skopeo,
    oci_image: LayoutImage,
    oci_index: tuple[LayoutImage, list[LayoutImage]],
    tmp_path: Path,
) -> None:
    populate(distribution, skopeo, oci_image, oci_index[0])
    expected = contents(distribution)
    assert set(expected) == {"team/app:v1", "team/app:stable", "multi:latest"}

    in_place = regd_factory(
        data_dir=tmp_path / "in-place", env={"REGD_STORAGE_ROOT": str(distribution.root)}
    )
    report = import_root(in_place, distribution.root)
    assert report["copied_bytes"] is False
    assert report["bytes_copied"] == 0
    assert report["repositories"] == ["multi", "team/app"]
    assert report["skipped"] == []
    assert report["tags"] == 3
    assert contents(in_place) == expected
    check_pulls(in_place, expected)
    # Importing again changes nothing.
    assert import_root(in_place, distribution.root)["tags"] == 3
    assert contents(in_place) == expected

    copied = regd_factory(data_dir=tmp_path / "copy")
    report = import_root(copied, distribution.root)
    assert report["copied_bytes"] is True
    assert report["bytes_copied"] > 0
    assert contents(copied) == expected
    check_pulls(copied, expected)
    r = httpx.post(f"{copied.url}/admin/v1/verify", json={})
    assert r.json()["healthy"] is True, r.text


def test_import_refuses_what_is_not_a_root(regd_factory: RegdFactory, tmp_path: Path) -> None:
    server = regd_factory()
    for root in (str(tmp_path), "relative/path", ""):
        r = httpx.post(f"{server.url}/admin/v1/import-registry2", json={"root": root})
        assert r.status_code == 400, root
        assert r.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_regctl_import_registry2(
    distribution: DistributionServer,
    regd_factory: RegdFactory,
    skopeo: Skopeo,
    oci_image: LayoutImage,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from regctl.main import main

    skopeo.copy(oci_image.ref, f"docker://{distribution.host}/solo:v1")
    server = regd_factory(data_dir=tmp_path / "regd")
    assert main(["import-registry2", str(distribution.root), server.host, "--dry-run"]) == 0
    assert "would import 1 repository, 1 manifest, 1 tag" in capsys.readouterr().out
    assert contents(server) == {}
    assert main(["import-registry2", str(distribution.root), server.host]) == 0
    assert "imported 1 repository, 1 manifest, 1 tag" in capsys.readouterr().out
    assert contents(server) == contents(distribution)
