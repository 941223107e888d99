"""Test support: content built through the client, CLI results, an authenticating registry."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx

from regd.client import RegistryClient
from regd.oci import mediatypes as mt
from regd.oci.digest import Digest
from regd.oci.reference import Reference
from tests.helpers.servers import DistributionServer, ServerStartError

EMPTY_CONFIG = b"{}"


@dataclass(frozen=True)
class Pushed:
    digest: Digest
    size: int
    media_type: str
    data: bytes

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        out.update(extra)
        return out


def _ref(host: str, repository: str, identifier: str | Digest | None = None) -> Reference:
    if isinstance(identifier, Digest):
        return Reference(host, repository, None, identifier)
    return Reference(host, repository, identifier)


async def push_blob(client: RegistryClient, host: str, repository: str, data: bytes) -> Digest:
    digest = Digest.of(data)
    await client.push_blob(_ref(host, repository, digest), data, len(data))
    return digest


async def push_manifest(
    client: RegistryClient,
    host: str,
    repository: str,
    doc: dict[str, Any],
    tag: str | None = None,
) -> Pushed:
    data = json.dumps(doc, indent=2).encode()
    digest = Digest.of(data)
    media_type = doc["mediaType"]
    await client.put_manifest(_ref(host, repository, tag or digest), data, media_type)
    return Pushed(digest, len(data), media_type, data)


async def push_image(
    client: RegistryClient,
    host: str,
    repository: str,
    tag: str | None = "latest",
    *,
    layers: list[bytes] | None = None,
    os_name: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    labels: dict[str, str] | None = None,
) -> Pushed:
    layer_data = layers if layers is not None else [os.urandom(1024)]
    layer_descs = []
    for blob in layer_data:
        digest = await push_blob(client, host, repository, blob)
        layer_descs.append(
            {"mediaType": mt.OCI_LAYER_GZIP, "digest": str(digest), "size": len(blob)}
        )
    config: dict[str, Any] = {
        "created": "2024-05-01T12:00:00Z",
        "architecture": architecture,
        "os": os_name,
        "config": {
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/usr/bin", "MODE=test"],
            "Labels": labels or {"org.example.team": "registry"},
        },
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
    }
    if variant:
        config["variant"] = variant
    config_data = json.dumps(config).encode()
    config_digest = await push_blob(client, host, repository, config_data)
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {
            "mediaType": mt.OCI_CONFIG,
            "digest": str(config_digest),
            "size": len(config_data),
        },
        "layers": layer_descs,
    }
    return await push_manifest(client, host, repository, doc, tag)


PLATFORMS = [("linux", "amd64", None), ("linux", "arm64", "v8"), ("linux", "s390x", None)]


async def push_index(
    client: RegistryClient, host: str, repository: str, tag: str = "multi"
) -> tuple[Pushed, list[Pushed]]:
    children = []
    entries = []
    for os_name, arch, variant in PLATFORMS:
        child = await push_image(
            client, host, repository, None, os_name=os_name, architecture=arch, variant=variant
        )
        children.append(child)
        platform = {"os": os_name, "architecture": arch}
        if variant:
            platform["variant"] = variant
        entries.append(child.descriptor(platform=platform))
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    return await push_manifest(client, host, repository, doc, tag), children


SBOM_TYPE = "application/vnd.example.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.example.signature.v1"


async def push_artifact(
    client: RegistryClient,
    host: str,
    repository: str,
    subject: Pushed | None,
    *,
    artifact_type: str = SBOM_TYPE,
    payload: bytes = b'{"packages": []}',
    tag: str | None = None,
) -> Pushed:
    await push_blob(client, host, repository, EMPTY_CONFIG)
    blob = await push_blob(client, host, repository, payload)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": mt.OCI_EMPTY,
            "digest": str(Digest.of(EMPTY_CONFIG)),
            "size": len(EMPTY_CONFIG),
        },
        "layers": [{"mediaType": artifact_type, "digest": str(blob), "size": len(payload)}],
        "annotations": {"org.opencontainers.image.created": "2024-05-02T00:00:00Z"},
    }
    if subject is not None:
        doc["subject"] = subject.descriptor()
    return await push_manifest(client, host, repository, doc, tag)


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd file (bcrypt is one of regd's runtime dependencies)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


class _AuthDistribution(DistributionServer):
    # The shared helper waits for a 200 on /v2/; with auth on, 401 is the sign of life.
    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"distribution exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=2).status_code == 401:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise ServerStartError(f"distribution did not answer on {self.url}")


def start_auth_distribution(scratch: Path) -> DistributionServer:
    hashed = bcrypt_hash("right-password")
    htpasswd = scratch / "htpasswd"
    htpasswd.write_text(f"alice:{hashed}\n")
    server = _AuthDistribution(root=scratch / "root", scratch=scratch)
    server.config.write_text(
        server.config.read_text()
        + f"auth:\n  htpasswd:\n    realm: regctl-tests\n    path: {htpasswd}\n"
    )
    server.start()
    return server
