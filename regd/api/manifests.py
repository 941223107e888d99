"""`/v2/<name>/manifests/<reference>`: push, pull and delete manifests."""

from __future__ import annotations

from email.utils import formatdate

from quart import Blueprint, Response, request

from regd.api.http import empty, read_limited, registry
from regd.registry import MAX_MANIFEST_SIZE

bp = Blueprint("manifests", __name__)


@bp.route("/v2/<path:name>/manifests/<reference>", methods=["GET", "HEAD"])
async def get_manifest(name: str, reference: str) -> Response:
    head = request.method == "HEAD"
    info = await registry().manifests.get(name, reference, with_payload=not head)
    headers = {
        "Docker-Content-Digest": info.digest,
        "Content-Type": info.media_type,
        "ETag": f'"{info.digest}"',
        # When the tag (or, by digest, the manifest) was pushed: lets clients sort by time.
        "Last-Modified": formatdate(info.created_at, usegmt=True),
    }
    response = Response(b"" if head else (info.payload or b""), status=200, headers=headers)
    response.content_length = info.size
    return response


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
