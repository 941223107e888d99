"""Hot read paths under 32 keep-alive clients: manifest HEAD and GET by tag, blob HEAD."""

from __future__ import annotations

from typing import Any

from bench import loadgen, oci
from bench.servers import Server
from bench.settings import Settings

REPO = "hot/app"
TAG = "latest"
NAMES = ("manifest_head", "manifest_get", "blob_head", "manifest_get_py")


def prepare(server: Server) -> str:
    """Push the image the reads aim at; answers the digest of one of its layers."""
    image = oci.SmallImage.make(f"hot-{server.name}")
    with server.connect() as conn:
        oci.push_image(conn, REPO, TAG, image)
    return image.layer_digests[0]


def run(server: Server, settings: Settings, layer: str, name: str) -> dict[str, Any]:
    clients, seconds = settings.hot_clients, settings.hot_seconds
    manifest = f"/v2/{REPO}/manifests/{TAG}"
    procs = settings.loadgen_processes
    if name == "manifest_get":
        # wrk sends one set of headers on every connection: one token for all of them.
        headers = {**oci.MANIFEST_ACCEPT, **server.credentials.headers_for(manifest)}
        result = loadgen.wrk(server.host, server.port, manifest, headers, clients, seconds)
    else:
        method, target = {
            "manifest_head": ("HEAD", manifest),
            "blob_head": ("HEAD", f"/v2/{REPO}/blobs/{layer}"),
            "manifest_get_py": ("GET", manifest),
        }[name]
        spec = loadgen.RequestSpec(method, target, oci.MANIFEST_ACCEPT)
        result = loadgen.closed_loop(
            server.host, server.port, [spec], clients, seconds, procs, server.credentials
        )
    return result.as_dict()
