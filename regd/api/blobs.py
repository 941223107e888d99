"""`/v2/<name>/blobs/<digest>`: fetch, check and unlink blobs."""

from __future__ import annotations

from quart import Blueprint, Response, request

from regd.api.errors import error_response
from regd.api.http import RangeNotSatisfiable, byte_range, empty, registry

bp = Blueprint("blobs", __name__)


@bp.route("/v2/<path:name>/blobs/<digest>", methods=["GET", "HEAD"])
async def get_blob(name: str, digest: str) -> Response:
    reg = registry()
    blob = await reg.blobs.stat(name, digest)
    headers = {
        "Docker-Content-Digest": str(blob.digest),
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{blob.digest}"',
        "Cache-Control": "max-age=31536000",
    }
    try:
        span = byte_range(blob.size)
    except RangeNotSatisfiable:
        return error_response(
            416,
            "BLOB_UNKNOWN" if blob.size == 0 else "SIZE_INVALID",
            f"requested range is outside the blob's {blob.size} bytes",
            headers={"Content-Range": f"bytes */{blob.size}"},
        )
    start, end = span if span is not None else (0, blob.size - 1)
    length = end - start + 1 if blob.size else 0
    status = 206 if span is not None else 200
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"

    if request.method == "HEAD":
        response = Response(b"", status=status, headers=headers)
        response.content_length = length
        return response

    url = await reg.blobs.redirect_url(blob)
    if url is not None:
        return empty(307, {"Location": url, "Docker-Content-Digest": str(blob.digest)})
    stream = await reg.blobs.open(blob, start, length)
    response = Response(stream, status=status, headers=headers)
    response.content_length = length
    return response


@bp.route("/v2/<path:name>/blobs/<digest>", methods=["DELETE"])
async def delete_blob(name: str, digest: str) -> Response:
    await registry().blobs.delete(name, digest)
    return empty(202, {"Docker-Content-Digest": digest})
