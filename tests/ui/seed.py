"""What the UI tests browse: images pushed over the API, with markup wherever a client can
put text (labels, environment, history, annotations)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.helpers.http_api import ApiClient
from tests.helpers.oci import OCI_INDEX, OCI_MANIFEST, descriptor, sha256

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
SIGNATURE_TYPE = "application/vnd.example.signature.v1"
SBOM_TYPE = "application/spdx+json"

# Each would run or change the page if it were not escaped.
LABEL_MARKUP = "<script>document.title='pwned-label'</script>"
ANNOTATION_MARKUP = "<img src=x onerror=\"document.title='pwned-annotation'\">"
HISTORY_MARKUP = "<b id=pwned-history>bold</b>"


@dataclass(frozen=True)
class Seeded:
    repository: str
    tag: str
    digest: str
    index_tag: str
    index_digest: str
    signature_digest: str
    layers: list[str]


def push_image(
    api: ApiClient,
    name: str,
    tag: str,
    *,
    architecture: str = "amd64",
    layers: tuple[bytes, ...] = (b"layer one\n",),
    config_extra: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> tuple[str, bytes, list[str]]:
    config_doc: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
        **(config_extra or {}),
    }
    config = json.dumps(config_doc).encode()
    api.push_blob(name, config)
    layer_digests = [api.push_blob(name, layer) for layer in layers]
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    if annotations:
        manifest["annotations"] = annotations
    body = json.dumps(manifest).encode()
    api.push_manifest(name, tag, body)
    return sha256(body), body, layer_digests


def seed(api: ApiClient) -> Seeded:
    name = "demo/app"
    digest, body, layers = push_image(
        api,
        name,
        "v1",
        layers=(b"first layer\n" * 50, b"second layer\n" * 20),
        config_extra={
            "created": "2026-01-02T03:04:05Z",
            "config": {
                "Entrypoint": ["/bin/app", "--serve"],
                "Cmd": ["--port", "8080"],
                "Env": ["PATH=/usr/bin", f"GREETING={HISTORY_MARKUP}"],
                "WorkingDir": "/srv",
                "Labels": {"org.example.note": LABEL_MARKUP, "version": "1.0"},
            },
            "history": [
                {"created_by": "ADD app /bin/app"},
                {"created_by": f"RUN echo {HISTORY_MARKUP}", "empty_layer": True},
            ],
        },
        annotations={"org.opencontainers.image.description": ANNOTATION_MARKUP},
    )
    push_image(api, name, "v2", layers=(b"v2 layer\n",))
    push_image(api, name, "doomed", layers=(b"doomed layer\n",))
    # A two-platform index.
    children = []
    for arch in ("amd64", "arm64"):
        _, child_body, _ = push_image(
            api, name, f"multi-{arch}", architecture=arch, layers=(arch.encode(),)
        )
        children.append(
            {
                **descriptor(OCI_MANIFEST, child_body),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    api.push_manifest(name, "multi", index.encode(), OCI_INDEX)
    subject = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body)}
    signature, _, _ = api.push_artifact(
        name,
        subject,
        artifact_type=SIGNATURE_TYPE,
        payload=b"signature bytes",
        annotations={"org.example.signer": ANNOTATION_MARKUP},
    )
    api.push_artifact(name, subject, artifact_type=SBOM_TYPE, payload=b'{"spdxVersion":"2.3"}')
    push_image(api, "other/lib", "1.0", layers=(b"first layer\n" * 50,))
    return Seeded(
        repository=name,
        tag="v1",
        digest=digest,
        index_tag="multi",
        index_digest=sha256(index.encode()),
        signature_digest=signature,
        layers=layers,
    )
