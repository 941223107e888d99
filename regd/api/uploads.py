"""`/v2/<name>/blobs/uploads/`: pushing blobs, whole, streamed or in chunks.

These routes carry blob bodies, so they are served directly (regd.api.direct): the body
comes from the server under its flow control, with no copy into a request object.
"""

from __future__ import annotations

import re

from regd.api import direct
from regd.api.direct import Reply, Request
from regd.api.errors import error_body
from regd.api.exchange import Exchange
from regd.api.http import content_length, content_range
from regd.api.origin import origin_of
from regd.errors import RangeInvalid, SizeInvalid, Unsupported
from regd.oci.digest import is_supported_algorithm
from regd.registry import BlobStat, UploadStatus


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _in_progress(status: UploadStatus, code: int = 202) -> Reply:
    return Reply(
        code,
        {
            "location": _location(status.repository, status.id),
            "range": f"0-{max(status.size - 1, 0)}",
            "docker-upload-uuid": status.id,
        },
    )


def _created(name: str, blob: BlobStat) -> Reply:
    return Reply(
        201,
        {"location": f"/v2/{name}/blobs/{blob.digest}", "docker-content-digest": str(blob.digest)},
    )


def _range_error(name: str, upload_id: str, error: RangeInvalid) -> Reply:
    # The session stays usable: tell the client where it stands.
    return Reply(
        416,
        {
            "content-type": "application/json",
            "location": _location(name, upload_id),
            "range": f"0-{max(error.current_size - 1, 0)}",
            "docker-upload-uuid": upload_id,
        },
        error_body(error.code, error.message, error.detail),
    )


def _chunk_bounds(request: Request) -> tuple[int | None, int | None]:
    """(start, length) a request claims for its body, checked for consistency."""
    length = content_length(request.headers.get("content-length"))
    span = content_range(request.headers.get("content-range"))
    if span is None:
        return None, length
    start, end = span
    if length is not None and length != end - start + 1:
        raise SizeInvalid(
            f"Content-Range covers {end - start + 1} bytes but Content-Length is {length}"
        )
    return start, end - start + 1


# Clients write the collection with its trailing slash; a few leave it out.
@direct.route({"POST"}, r"^/v2/(.+)/blobs/uploads/?$")
async def start_upload(x: Exchange, request: Request, match: re.Match[str]) -> Reply:
    name = match[1]
    mount = request.arg("mount")
    if mount is not None:
        # Only from repositories the caller may pull (regd.api.auth).
        may_pull = None if x.viewer is None else x.viewer.may_pull
        blob = await x.registry.blobs.mount(
            name, mount, request.arg("from"), may_pull, origin=origin_of(x, request.headers)
        )
        if blob is not None:
            return _created(name, blob)
        # Nothing to mount: fall back to an ordinary session, as the spec asks.
        return _in_progress(await x.registry.uploads.start(name))
    algorithm = request.arg("digest-algorithm")
    if algorithm is not None and not is_supported_algorithm(algorithm):
        raise Unsupported(f"digest algorithm {algorithm[:40]!r} is not supported")
    digest = request.arg("digest")
    if digest is not None:
        length = content_length(request.headers.get("content-length"))
        blob = await x.registry.uploads.monolithic(
            name, digest, request.body(), length, origin=origin_of(x, request.headers)
        )
        return _created(name, blob)
    return _in_progress(await x.registry.uploads.start(name))


@direct.route({"GET", "PATCH", "PUT", "DELETE"}, r"^/v2/(.+)/blobs/uploads/([^/]+)$")
async def upload_session(x: Exchange, request: Request, match: re.Match[str]) -> Reply:
    name, upload_id = match[1], match[2]
    if request.method == "GET":
        return _in_progress(await x.registry.uploads.status(name, upload_id), 204)
    if request.method == "DELETE":
        await x.registry.uploads.cancel(name, upload_id)
        return Reply(204)
    start, length = _chunk_bounds(request)
    try:
        if request.method == "PATCH":
            status = await x.registry.uploads.append(
                name, upload_id, request.body(), start=start, length=length
            )
            return _in_progress(status)
        blob = await x.registry.uploads.finish(
            name,
            upload_id,
            request.arg("digest"),
            request.body(),
            start=start,
            length=length,
            origin=origin_of(x, request.headers),
        )
    except RangeInvalid as exc:
        return _range_error(name, upload_id, exc)
    return _created(name, blob)
