"""`/v2/<name>/manifests/<reference>`: push, pull and delete manifests."""

from __future__ import annotations

import re
from email.utils import formatdate

from regd.api import direct
from regd.api.direct import Reply
from regd.errors import ManifestTooLarge
from regd.registry import MAX_MANIFEST_SIZE, Registry


# The reference is the last path component, so the repository name takes the rest.
@direct.route({"GET", "HEAD"}, r"^/v2/(.+)/manifests/([^/]+)$", exclusive=True)
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


@direct.route({"PUT"}, r"^/v2/(.+)/manifests/([^/]+)$", exclusive=True)
async def put_manifest(reg: Registry, request: direct.Request, match: re.Match[str]) -> Reply:
    name, reference = match[1], match[2]
    payload = await request.read(MAX_MANIFEST_SIZE, ManifestTooLarge)
    pushed = await reg.manifests.put(
        name,
        reference,
        payload,
        request.headers.get("content-type"),
        tuple(request.arg_list("tag")),
    )
    reply = Reply(
        201,
        {
            "location": f"/v2/{name}/manifests/{pushed.digest}",
            "docker-content-digest": str(pushed.digest),
        },
    )
    if pushed.subject is not None:
        reply.headers["oci-subject"] = str(pushed.subject)
    reply.repeated = [("oci-tag", tag) for tag in pushed.tags]
    if request.viewer is not None:  # audit (regd.api.auth)
        await request.viewer.audit("push", name, reference)
        for tag in pushed.tags:
            if tag != reference:
                await request.viewer.audit("tag", name, tag)
    return reply


@direct.route({"DELETE"}, r"^/v2/(.+)/manifests/([^/]+)$", exclusive=True)
async def delete_manifest(reg: Registry, request: direct.Request, match: re.Match[str]) -> Reply:
    await reg.manifests.delete(match[1], match[2])
    if request.viewer is not None:  # audit (regd.api.auth)
        kind = "delete-manifest" if ":" in match[2] else "delete-tag"
        await request.viewer.audit(kind, match[1], match[2])
    return Reply(202)
