"""`/v2/<name>/blobs/<digest>`: fetch, check and unlink blobs."""

from __future__ import annotations

import re

from regd.api import direct
from regd.api.direct import Reply
from regd.api.errors import error_body
from regd.api.exchange import Exchange
from regd.api.http import RangeNotSatisfiable, byte_range
from regd.api.origin import origin_of


# A digest has no slash, which also keeps `.../blobs/uploads/<id>` out of this route.
@direct.route({"GET", "HEAD"}, r"^/v2/(.+)/blobs/([^/]+)$")
async def get_blob(x: Exchange, request: direct.Request, match: re.Match[str]) -> Reply:
    blob = await x.registry.blobs.stat(match[1], match[2])
    headers = {
        "docker-content-digest": str(blob.digest),
        "content-type": "application/octet-stream",
        "accept-ranges": "bytes",
        "etag": f'"{blob.digest}"',
        "cache-control": "max-age=31536000",
    }
    try:
        span = byte_range(request.headers.get("range"), blob.size)
    except RangeNotSatisfiable:
        return Reply(
            416,
            {"content-type": "application/json", "content-range": f"bytes */{blob.size}"},
            error_body(
                "BLOB_UNKNOWN" if blob.size == 0 else "SIZE_INVALID",
                f"requested range is outside the blob's {blob.size} bytes",
            ),
        )
    start, end = span if span is not None else (0, blob.size - 1)
    length = end - start + 1 if blob.size else 0
    status = 206 if span is not None else 200
    if span is not None:
        headers["content-range"] = f"bytes {start}-{end}/{blob.size}"
    if request.head:
        return Reply(status, headers, length=length)

    if x.registry.pull_events:
        x.registry.blobs.note_pull(match[1], blob, origin_of(x, request.headers))
    url = await x.registry.blobs.redirect_url(blob)
    if url is not None:
        return Reply(307, {"location": url, "docker-content-digest": str(blob.digest)})
    filler = origin_of(x, request.headers) if blob.upstream and x.registry.fill_events else None
    stream = await x.registry.blobs.open(blob, start, length, filler)
    return Reply(status, headers, stream=stream, length=length)


@direct.route({"DELETE"}, r"^/v2/(.+)/blobs/([^/]+)$")
async def delete_blob(x: Exchange, request: direct.Request, match: re.Match[str]) -> Reply:
    await x.registry.blobs.delete(match[1], match[2], origin=origin_of(x, request.headers))
    return Reply(202, {"docker-content-digest": match[2]})
