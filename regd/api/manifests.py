"""`/v2/<name>/manifests/<reference>`: push, pull and delete manifests."""

from __future__ import annotations

import re
from email.utils import formatdate

from quart import Blueprint, Response, request

from regd.api import direct
from regd.api.direct import Reply
from regd.api.http import empty, read_limited, registry
from regd.registry import MAX_MANIFEST_SIZE, Registry

bp = Blueprint("manifests", __name__)


# The reference is the last path component, so the repository name takes the rest.
@direct.route({"GET", "HEAD"}, r"^/v2/(.+)/manifests/([^/]+)$")
async def get_manifest(reg: Registry, request: direct.Request, match: re.Match[str]) -> Reply:
    name, reference = match[1], match[2]
    info = await reg.manifests.get(name, reference, with_payload=not request.head)
    headers = {
        "docker-content-digest": info.digest,
        "content-type": info.media_type,
        "etag": f'"{info.digest}"',
        # When the tag (or, by digest, the manifest) was pushed: lets clients sort by time.
        "last-modified": formatdate(info.created_at, usegmt=True),
    }
    return Reply(200, headers, info.payload or b"", length=info.size)


@bp.route("/v2/<path:name>/manifests/<reference>", methods=["PUT"])
async def put_manifest(name: str, reference: str) -> Response:
    payload = await read_limited(MAX_MANIFEST_SIZE)
    pushed = await registry().manifests.put(
        name,
        reference,
        payload,
        request.headers.get("Content-Type"),
        tuple(request.args.getlist("tag")),
    )
    response = empty(
        201,
        {
            "Location": f"/v2/{name}/manifests/{pushed.digest}",
            "Docker-Content-Digest": str(pushed.digest),
        },
    )
    if pushed.subject is not None:
        response.headers["OCI-Subject"] = str(pushed.subject)
    for tag in pushed.tags:
        response.headers.add("OCI-Tag", tag)
    return response


@bp.route("/v2/<path:name>/manifests/<reference>", methods=["DELETE"])
async def delete_manifest(name: str, reference: str) -> Response:
    await registry().manifests.delete(name, reference)
    return empty(202, {})
