"""The helpers check registries; these tests check the helpers, so that a green end-to-end
run means the registry is right and not that a helper looked away."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.helpers.http_api import pattern_digest, pattern_stream
from tests.helpers.oci import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    Layout,
    artifact_manifest,
    build_multiplatform,
    sha256,
)
from tests.helpers.reference import require_distribution
from tests.helpers.store import check_blob_store, copies_of

EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def store_blob(root: Path, data: bytes, *, name: str | None = None) -> Path:
    hexpart = name or hashlib.sha256(data).hexdigest()
    path = root / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_blob_store_check_accepts_good_blobs(tmp_path: Path) -> None:
    store_blob(tmp_path, b"one")
    store_blob(tmp_path, b"two")
    (tmp_path / "docker/registry/v2/repositories/r/_uploads/u").mkdir(parents=True)
    (tmp_path / "docker/registry/v2/repositories/r/_uploads/u/data").write_bytes(b"partial")
    assert check_blob_store(tmp_path) == 2


def test_blob_store_check_finds_a_corrupt_blob(tmp_path: Path) -> None:
    store_blob(tmp_path, b"good")
    store_blob(tmp_path, b"truncated", name=hashlib.sha256(b"truncated and more").hexdigest())
    with pytest.raises(AssertionError, match="does not hash"):
        check_blob_store(tmp_path)


def test_copies_of(tmp_path: Path) -> None:
    blob = store_blob(tmp_path, b"payload")
    assert copies_of(tmp_path, b"payload") == [blob]
    (tmp_path / "leftover").write_bytes(b"payload")
    assert len(copies_of(tmp_path, b"payload")) == 2
    assert copies_of(tmp_path, b"payloaX") == []


@pytest.mark.parametrize(("start", "end"), [(0, 1), (0, 3_000_001), (13, 2_000_000), (5, 6)])
async def test_pattern_stream_is_a_slice_of_one_stream(start: int, end: int) -> None:
    pattern = b"0123456789abcdefghijklmnopqrstuvwxyz"
    whole = (pattern * (end // len(pattern) + 1))[:end]
    got = b"".join([piece async for piece in pattern_stream(pattern, start, end, chunk=65537)])
    assert got == whole[start:]
    if start == 0:
        assert pattern_digest(pattern, end, chunk=1000) == sha256(whole)


def test_multiplatform_layout(tmp_path: Path) -> None:
    index, images = build_multiplatform(tmp_path / "layout", "multi", tmp_path / "files")
    layout = Layout(tmp_path / "layout")
    assert layout.resolve("multi")["digest"] == index.digest
    doc = json.loads(layout.read_blob(index.digest))
    assert doc["mediaType"] == OCI_INDEX
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in doc["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}
    assert [m["digest"] for m in doc["manifests"]] == [i.digest for i in images]
    manifests, blobs = layout.reachable("multi")
    assert manifests == {index.digest, *(i.digest for i in images)}
    for image in images:
        config = json.loads(layout.read_blob(layout.manifest(image.digest)["config"]["digest"]))
        assert image.tag.endswith(config["architecture"])
        assert layout.manifest(image.digest)["config"]["digest"] in blobs
    # The two images differ, so an index copy has to carry both sets of layers.
    layers = [{layer["digest"] for layer in layout.manifest(i.digest)["layers"]} for i in images]
    assert layers[0] != layers[1]


def test_artifact_manifest_shape() -> None:
    subject = {"mediaType": "m", "digest": sha256(b"s"), "size": 1, "annotations": {"x": "y"}}
    doc = json.loads(artifact_manifest(subject, artifact_type="application/x.test", payload=b"p"))
    assert doc["artifactType"] == "application/x.test"
    assert doc["config"] == {"mediaType": OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2}
    assert sha256(EMPTY_JSON) == EMPTY_DIGEST
    assert doc["layers"][0]["digest"] == sha256(b"p")
    assert doc["subject"] == {"mediaType": "m", "digest": sha256(b"s"), "size": 1}


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_reference_registry_fails_under_ci(
    ci: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match="docker-registry"):
        require_distribution()


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_missing_reference_registry_skips_outside_ci(
    ci: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.skip.Exception, match="docker-registry"):
        require_distribution()


def test_installed_reference_registry_is_required_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "docker-registry"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("PATH", str(tmp_path))
    require_distribution()
