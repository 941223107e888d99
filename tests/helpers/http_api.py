"""A deliberately small registry client over httpx, for tests that need raw HTTP control.

Real clients (skopeo, podman) do most of the end-to-end work; this covers what they cannot
express: artifacts with a `subject`, referrers queries, and hand-driven upload sessions.
Failures raise `RegistryError` carrying the request and the whole answer, so a test failure
says exactly what the server did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import urljoin

import httpx

from tests.helpers.oci import EMPTY_JSON, OCI_MANIFEST, artifact_manifest, sha256

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class UnexpectedAnswer(AssertionError):
    def __init__(self, what: str, response: httpx.Response) -> None:
        request = response.request
        super().__init__(
            f"{what}: {request.method} {request.url} -> {response.status_code}\n"
            f"response headers: {dict(response.headers)}\n"
            f"response body: {response.text[:2000]}"
        )
        self.response = response


def expect(response: httpx.Response, what: str, *statuses: int) -> httpx.Response:
    if response.status_code not in statuses:
        raise UnexpectedAnswer(what, response)
    return response


def location(response: httpx.Response) -> str:
    """The absolute URL of an answer's Location header (registries may send either form)."""
    value = response.headers.get("location")
    if not value:
        raise UnexpectedAnswer("answer has no Location header", response)
    return urljoin(str(response.request.url), value)


def with_digest(url: str, digest: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}digest={digest}"


class ApiClient:
    """Synchronous helper bound to one registry base URL."""

    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_upload(self, name: str) -> str:
        answer = self.http.post(f"/v2/{name}/blobs/uploads/")
        return location(expect(answer, "start upload", 202))

    def push_blob(self, name: str, data: bytes) -> str:
        """POST a session, then PUT the whole blob with its digest."""
        digest = sha256(data)
        url = self.start_upload(name)
        answer = self.http.put(
            with_digest(url, digest),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        expect(answer, f"push blob {digest}", 201)
        return digest

    def push_manifest(
        self, name: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
    ) -> httpx.Response:
        answer = self.http.put(
            f"/v2/{name}/manifests/{reference}",
            content=body,
            headers={"Content-Type": media_type},
        )
        return expect(answer, f"push manifest {name}:{reference}", 201)

    def get_manifest(self, name: str, reference: str) -> httpx.Response:
        answer = self.http.get(
            f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )
        return expect(answer, f"get manifest {name}:{reference}", 200)

    def get_blob(self, name: str, digest: str) -> bytes:
        answer = self.http.get(f"/v2/{name}/blobs/{digest}", follow_redirects=True)
        return expect(answer, f"get blob {digest}", 200).content

    def tags(self, name: str) -> list[str]:
        answer = expect(self.http.get(f"/v2/{name}/tags/list"), f"list tags of {name}", 200)
        tags: list[str] = answer.json().get("tags") or []
        return tags

    def referrers(self, name: str, digest: str, artifact_type: str | None = None) -> httpx.Response:
        params = {"artifactType": artifact_type} if artifact_type else None
        answer = self.http.get(f"/v2/{name}/referrers/{digest}", params=params)
        return expect(answer, f"referrers of {digest}", 200)

    def push_artifact(
        self,
        name: str,
        subject: Mapping[str, Any],
        *,
        artifact_type: str,
        payload: bytes,
        annotations: Mapping[str, str] | None = None,
        tag: str | None = None,
    ) -> tuple[str, bytes, httpx.Response]:
        """Push an artifact referring to `subject`; returns its digest, bytes and PUT answer."""
        self.push_blob(name, EMPTY_JSON)
        self.push_blob(name, payload)
        body = artifact_manifest(
            subject, artifact_type=artifact_type, payload=payload, annotations=annotations
        )
        digest = sha256(body)
        answer = self.push_manifest(name, tag or digest, body)
        return digest, body, answer

    def push_tiny_image(
        self, name: str, tag: str, *, payload: bytes, label: str | None = None
    ) -> tuple[str, bytes]:
        """A small but valid image manifest (one layer), pushed without any external tool.
        Images differing only in `payload` share their config blob; a `label` makes it unique."""
        doc: dict[str, Any] = {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }
        if label is not None:
            doc["config"] = {"Labels": {"org.example.label": label}}
        config = json.dumps(doc).encode()
        config_digest = self.push_blob(name, config)
        layer_digest = self.push_blob(name, payload)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(payload),
                }
            ],
        }
        body = json.dumps(manifest).encode()
        self.push_manifest(name, tag, body)
        return sha256(body), body


async def apush_blob(client: httpx.AsyncClient, base_url: str, name: str, data: bytes) -> str:
    """The async twin of `Registry.push_blob`, for tests that push concurrently."""
    digest = sha256(data)
    started = await client.post(f"{base_url}/v2/{name}/blobs/uploads/")
    url = location(expect(started, "start upload", 202))
    done = await client.put(with_digest(url, digest), content=data)
    expect(done, f"push blob {digest}", 201)
    return digest


def _pattern_block(pattern: bytes, start: int, size: int) -> bytes:
    shift = start % len(pattern)
    return (pattern * (size // len(pattern) + 2))[shift : shift + size]


async def pattern_stream(
    pattern: bytes, start: int, end: int, chunk: int = 1 << 20
) -> AsyncIterator[bytes]:
    """Bytes `start`..`end` of `pattern` repeated forever, produced lazily so that a large
    blob never sits in memory and any part of it can be sent again."""
    position = start
    while position < end:
        size = min(chunk, end - position)
        yield _pattern_block(pattern, position, size)
        position += size


def pattern_digest(pattern: bytes, total: int, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    for position in range(0, total, chunk):
        h.update(_pattern_block(pattern, position, min(chunk, total - position)))
    return "sha256:" + h.hexdigest()


def manifests_in(index: bytes) -> Iterable[dict[str, Any]]:
    doc: dict[str, Any] = json.loads(index)
    manifests: list[dict[str, Any]] = doc.get("manifests") or []
    return manifests
