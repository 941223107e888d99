"""`/v2/<name>/manifests/<reference>`: push, pull and delete manifests."""

from __future__ import annotations

import functools
import re
from email.utils import formatdate

from regd.api import direct
from regd.api.direct import Reply
from regd.api.exchange import Exchange
from regd.api.http import stale_warning
from regd.api.origin import origin_of
from regd.errors import ManifestTooLarge, ManifestUnknown, TagInvalid
from regd.registry import MAX_MANIFEST_SIZE


@functools.lru_cache(maxsize=4096)
def _http_date(when: float) -> str:
    """`when` as an HTTP date. The same few manifests are asked for over and over, and
    formatting the date took 2 % of a worker's event loop under manifest GETs."""
    return formatdate(when, usegmt=True)


# The reference is the last path component, so the repository name takes the rest.
@direct.route({"GET", "HEAD"}, r"^/v2/(.+)/manifests/([^/]+)$")
async def get_manifest(x: Exchange, request: direct.Request, match: re.Match[str]) -> Reply:
    name, reference = match[1], match[2]
    try:
        filler = origin_of(x, request.headers) if x.registry.fill_events else None
        info = await x.registry.manifests.get(
            name, reference, with_payload=not request.head, origin=filler
        )
    except TagInvalid:
        raise _cannot_exist(name, reference) from None
    if x.registry.pull_events and not request.head:
        x.registry.manifests.note_pull(name, reference, info, origin_of(x, request.headers))
    headers = {
        "docker-content-digest": info.digest,
        "content-type": info.media_type,
        "etag": f'"{info.digest}"',
        # When the tag (or, by digest, the manifest) was pushed: lets clients sort by time.
        "last-modified": _http_date(info.created_at),
    }
    if info.stale is not None:
        # A mirror's upstream failed and the cached tag stands in (RFC 7234's warn-code).
        headers["warning"] = stale_warning(info.stale)
    return Reply(200, headers, info.payload or b"", length=info.size)


@direct.route({"PUT"}, r"^/v2/(.+)/manifests/([^/]+)$")
async def put_manifest(x: Exchange, request: direct.Request, match: re.Match[str]) -> Reply:
    name, reference = match[1], match[2]
    payload = await request.read(MAX_MANIFEST_SIZE, ManifestTooLarge)
    pushed = await x.registry.manifests.put(
        name,
        reference,
        payload,
        request.headers.get("content-type"),
        tuple(request.arg_list("tag")),
        origin=origin_of(x, request.headers),
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
    if x.viewer is not None:  # audit (regd.api.auth)
        await x.viewer.audit("push", name, reference)
        for tag in pushed.tags:
            if tag != reference:
                await x.viewer.audit("tag", name, tag)
    return reply


@direct.route({"DELETE"}, r"^/v2/(.+)/manifests/([^/]+)$")
async def delete_manifest(x: Exchange, request: direct.Request, match: re.Match[str]) -> Reply:
    try:
        await x.registry.manifests.delete(match[1], match[2], origin=origin_of(x, request.headers))
    except TagInvalid:
        raise _cannot_exist(match[1], match[2]) from None
    if x.viewer is not None:  # audit (regd.api.auth)
        kind = "delete-manifest" if ":" in match[2] else "delete-tag"
        await x.viewer.audit(kind, match[1], match[2])
    return Reply(202)


def _cannot_exist(name: str, reference: str) -> ManifestUnknown:
    # Only a push is told its tag is malformed; to a read, a reference that cannot exist
    # is one that is not there (as the conformance suite expects).
    return ManifestUnknown(
        f"manifest {reference[:200]} is not in repository {name[:300]}: it is not a valid tag",
        {"reference": reference[:300]},
    )
