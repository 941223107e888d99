"""Registry operations the workloads are made of, over one `Connection`."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from bench.httpc import Body, Connection, Response

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_ACCEPT = {"Accept": OCI_MANIFEST}
OCTET = {"Content-Type": "application/octet-stream"}


class RegistryError(Exception):
    """The registry answered a status the operation did not expect."""

    def __init__(self, what: str, response: Response) -> None:
        super().__init__(f"{what}: HTTP {response.status} {response.body[:200]!r}")
        self.response = response


def digest_of(data: Body) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def expect(response: Response, what: str, *statuses: int) -> Response:
    if response.status not in statuses:
        raise RegistryError(what, response)
    return response


def _path(location: str) -> str:
    """A Location header as a request target (Distribution answers absolute URLs)."""
    if location.startswith("http://") or location.startswith("https://"):
        rest = location.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return location


def _with_query(location: str, query: str) -> str:
    target = _path(location)
    return f"{target}{'&' if '?' in target else '?'}{query}"


def start_upload(conn: Connection, repo: str) -> str:
    r = expect(conn.request("POST", f"/v2/{repo}/blobs/uploads/"), "start upload", 202)
    return r.header("location")


def push_blob(conn: Connection, repo: str, data: Body, digest: str | None = None) -> str:
    """POST a session, then PUT the whole blob with its digest: what clients do everywhere."""
    digest = digest or digest_of(data)
    location = start_upload(conn, repo)
    target = _with_query(location, "digest=" + quote(digest))
    expect(conn.request("PUT", target, OCTET, data), "put blob", 201)
    return digest


def push_blob_single_post(conn: Connection, repo: str, data: Body, digest: str) -> bool:
    """POST ?digest= with the body. True when the registry stored it (201); False when it
    declined (202) and the caller must fall back to a PUT."""
    target = f"/v2/{repo}/blobs/uploads/?digest={quote(digest)}"
    r = expect(conn.request("POST", target, OCTET, data), "monolithic post", 201, 202)
    return r.status == 201


def push_blob_chunked(conn: Connection, repo: str, data: Body, digest: str, chunk_size: int) -> int:
    """PATCH chunks with Content-Range, then PUT ?digest=; answers the number of requests."""
    return push_blob_chunked_over(itertools.repeat(conn), repo, data, digest, chunk_size)


def push_blob_chunked_over(
    conns: Iterator[Connection],
    repo: str,
    data: Body,
    digest: str,
    chunk_size: int,
    timings: dict[str, list[float]] | None = None,
) -> int:
    """`push_blob_chunked` with each request sent on the next of `conns` (one connection
    per replica, in turn, is a load balancer without sticky sessions). `timings`, when
    given, collects each request's seconds under "POST", "PATCH" and "PUT"."""
    clock = time.perf_counter
    times: dict[str, list[float]] = timings if timings is not None else {}
    for method in ("POST", "PATCH", "PUT"):
        times.setdefault(method, [])
    view = memoryview(data)
    t0 = clock()
    location = start_upload(next(conns), repo)
    times["POST"].append(clock() - t0)
    requests = 1
    for start in range(0, len(view), chunk_size):
        piece = view[start : start + chunk_size]
        headers = {**OCTET, "Content-Range": f"{start}-{start + len(piece) - 1}"}
        t0 = clock()
        r = next(conns).request("PATCH", _path(location), headers, piece)
        expect(r, "patch chunk", 202)
        times["PATCH"].append(clock() - t0)
        location = r.header("location")
        requests += 1
    target = _with_query(location, "digest=" + quote(digest))
    t0 = clock()
    expect(next(conns).request("PUT", target), "finish chunked upload", 201)
    times["PUT"].append(clock() - t0)
    return requests + 1


def mount_blob(conn: Connection, repo: str, digest: str, source: str) -> bool:
    target = f"/v2/{repo}/blobs/uploads/?mount={quote(digest)}&from={quote(source)}"
    r = expect(conn.request("POST", target), "mount", 201, 202)
    return r.status == 201


def put_manifest(conn: Connection, repo: str, reference: str, manifest: bytes) -> None:
    r = conn.request(
        "PUT", f"/v2/{repo}/manifests/{reference}", {"Content-Type": OCI_MANIFEST}, manifest
    )
    expect(r, "put manifest", 201)


def manifest_for(config: bytes, layers: list[bytes]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class SmallImage:
    """Three distinct layers, a config and the manifest that ties them."""

    layers: list[bytes]
    config: bytes
    manifest: bytes

    @classmethod
    def make(cls, label: str, layer_size: int = 4096) -> SmallImage:
        layers = [os.urandom(layer_size) for _ in range(3)]
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "config": {"Labels": {"bench": label}}}
        ).encode()
        return cls(layers, config, manifest_for(config, layers))

    @property
    def layer_digests(self) -> list[str]:
        return [digest_of(layer) for layer in self.layers]


def push_image(conn: Connection, repo: str, tag: str, image: SmallImage) -> int:
    """Push blobs then manifest; answers the number of requests sent."""
    for blob in [*image.layers, image.config]:
        push_blob(conn, repo, blob)
    put_manifest(conn, repo, tag, image.manifest)
    return 2 * (len(image.layers) + 1) + 1


def next_link(response: Response) -> str | None:
    """The target of a `Link: <...>; rel="next"` header, if any."""
    link = response.header("link")
    if not link or 'rel="next"' not in link:
        return None
    return _path(link.split("<", 1)[1].split(">", 1)[0])


def walk_list(conn: Connection, first: str, key: str, limit: int = 100_000) -> Iterator[list[str]]:
    """Follow `Link` from `first`, yielding each page's entries."""
    target: str | None = first
    pages = 0
    while target is not None and pages < limit:
        r = expect(conn.request("GET", target), f"list {target}", 200)
        yield list(json.loads(r.body).get(key) or [])
        target = next_link(r)
        pages += 1
