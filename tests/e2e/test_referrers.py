"""OCI 1.1 artifacts with a `subject`, and the referrers API that lists them (regd only:
the reference registry has no referrers API)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.helpers.clients import Skopeo
from tests.helpers.http_api import ApiClient, manifests_in
from tests.helpers.oci import OCI_INDEX, OCI_MANIFEST, Layout, LayoutImage, sha256
from tests.helpers.servers import RegdServer

pytestmark = pytest.mark.e2e

SBOM = "application/vnd.example.sbom.v1+json"
SIGNATURE = "application/vnd.example.signature.v1"


@pytest.fixture
def regd(regd_server: RegdServer) -> Iterator[ApiClient]:
    with ApiClient(regd_server.url) as client:
        yield client


@pytest.fixture
def subject(regd_server: RegdServer, skopeo: Skopeo, oci_image: LayoutImage) -> dict[str, object]:
    skopeo.copy(oci_image.ref, f"docker://{regd_server.host}/e2e/signed:v1")
    size = Layout(oci_image.layout).blob_path(oci_image.digest).stat().st_size
    return {"mediaType": OCI_MANIFEST, "digest": oci_image.digest, "size": size}


def test_artifact_push_answers_with_oci_subject(
    regd: ApiClient, subject: dict[str, object]
) -> None:
    digest, body, answer = regd.push_artifact(
        "e2e/signed", subject, artifact_type=SBOM, payload=b'{"packages": []}'
    )
    assert answer.headers.get("oci-subject") == subject["digest"]
    assert answer.headers.get("docker-content-digest") == digest
    assert regd.get_manifest("e2e/signed", digest).content == body


def test_referrers_list_and_filter(regd: ApiClient, subject: dict[str, object]) -> None:
    sbom, sbom_body, _ = regd.push_artifact(
        "e2e/signed",
        subject,
        artifact_type=SBOM,
        payload=b'{"packages": ["busybox"]}',
        annotations={"org.example.kind": "sbom"},
    )
    signature, _, _ = regd.push_artifact(
        "e2e/signed", subject, artifact_type=SIGNATURE, payload=b"signed bytes"
    )

    answer = regd.referrers("e2e/signed", str(subject["digest"]))
    assert answer.headers["content-type"].startswith(OCI_INDEX)
    index = answer.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in manifests_in(answer.content)}
    assert set(by_digest) == {sbom, signature}
    assert by_digest[sbom] == {
        "mediaType": OCI_MANIFEST,
        "digest": sbom,
        "size": len(sbom_body),
        "artifactType": SBOM,
        "annotations": {"org.example.kind": "sbom"},
    }
    assert by_digest[signature]["artifactType"] == SIGNATURE
    assert "oci-filters-applied" not in answer.headers

    filtered = regd.referrers("e2e/signed", str(subject["digest"]), artifact_type=SIGNATURE)
    assert filtered.headers.get("oci-filters-applied") == "artifactType"
    assert [d["digest"] for d in manifests_in(filtered.content)] == [signature]

    nothing = regd.referrers("e2e/signed", str(subject["digest"]), artifact_type="x/none")
    assert nothing.headers.get("oci-filters-applied") == "artifactType"
    assert list(manifests_in(nothing.content)) == []


def test_referrers_of_a_digest_without_any(regd: ApiClient, subject: dict[str, object]) -> None:
    lonely = sha256(b"nothing refers to this")
    answer = regd.referrers("e2e/signed", lonely)
    assert answer.json()["manifests"] == []


def test_referrers_with_a_subject_pushed_later(regd: ApiClient) -> None:
    # The spec lets an artifact arrive before the image it describes.
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    future = {"mediaType": OCI_MANIFEST, "digest": sha256(config), "size": len(config)}
    digest, _, _ = regd.push_artifact("e2e/early", future, artifact_type=SBOM, payload=b"{}")
    listed = regd.referrers("e2e/early", str(future["digest"]))
    assert [d["digest"] for d in manifests_in(listed.content)] == [digest]


def test_deleted_artifact_leaves_the_list(regd: ApiClient, subject: dict[str, object]) -> None:
    digest, _, _ = regd.push_artifact("e2e/signed", subject, artifact_type=SBOM, payload=b"{}")
    deleted = regd.http.delete(f"/v2/e2e/signed/manifests/{digest}")
    assert deleted.status_code == 202, deleted.text
    listed = regd.referrers("e2e/signed", str(subject["digest"]))
    assert list(manifests_in(listed.content)) == []


def test_referrers_bad_digest(regd: ApiClient) -> None:
    answer = regd.http.get("/v2/e2e/signed/referrers/sha256:not-hex")
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["code"] == "DIGEST_INVALID"
