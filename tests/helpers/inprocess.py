"""Helpers for tests that drive the in-process app (the `client` fixture) over httpx."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(client: httpx.AsyncClient, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


def image_manifest(config: tuple[str, int], layers: list[tuple[str, int]], **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config[0],
            "size": config[1],
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
            for d, s in layers
        ],
    }
    doc.update(extra)
    return json.dumps(doc).encode()


async def push_image(
    client: httpx.AsyncClient, repo: str, tag: str | None, seed: str = "x", **extra: Any
) -> tuple[str, bytes]:
    """Push a small image; returns (manifest digest, manifest bytes)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer of {seed}".encode()
    c = await push_blob(client, repo, config)
    lyr = await push_blob(client, repo, layer)
    payload = image_manifest((c, len(config)), [(lyr, len(layer))], **extra)
    ref = tag or digest_of(payload)
    r = await client.put(
        f"/v2/{repo}/manifests/{ref}",
        content=payload,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    return r.headers["Docker-Content-Digest"], payload


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"errors"}, body
    code: str = body["errors"][0]["code"]
    assert body["errors"][0]["message"]
    return code
