"""`/v2/<name>/blobs/uploads/`: pushing blobs, whole, streamed or in chunks."""

from __future__ import annotations

from quart import Blueprint, Response, request

from regd.api.errors import error_response
from regd.api.http import body_chunks, content_length, content_range, empty, registry
from regd.errors import RangeInvalid, SizeInvalid, Unsupported
from regd.oci.digest import is_supported_algorithm
from regd.registry import BlobStat, UploadStatus

bp = Blueprint("uploads", __name__)


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _in_progress(status: UploadStatus, code: int = 202) -> Response:
    return empty(
        code,
        {
            "Location": _location(status.repository, status.id),
            "Range": f"0-{max(status.size - 1, 0)}",
            "Docker-Upload-UUID": status.id,
        },
    )


def _created(name: str, blob: BlobStat) -> Response:
    return empty(
        201,
        {"Location": f"/v2/{name}/blobs/{blob.digest}", "Docker-Content-Digest": str(blob.digest)},
    )


def _range_error(name: str, upload_id: str, error: RangeInvalid) -> Response:
    # The session stays usable: tell the client where it stands.
    return error_response(
        416,
        error.code,
        error.message,
        error.detail,
        headers={
            "Location": _location(name, upload_id),
            "Range": f"0-{max(error.current_size - 1, 0)}",
            "Docker-Upload-UUID": upload_id,
        },
    )


def _chunk_bounds() -> tuple[int | None, int | None]:
    """(start, length) a request claims for its body, checked for consistency."""
    length = content_length()
    span = content_range()
    if span is None:
        return None, length
    start, end = span
    if length is not None and length != end - start + 1:
        raise SizeInvalid(
            f"Content-Range covers {end - start + 1} bytes but Content-Length is {length}"
        )
    return start, end - start + 1


@bp.route("/v2/<path:name>/blobs/uploads/", methods=["POST"])
async def start_upload(name: str) -> Response:
    reg = registry()
    args = request.args
    mount = args.get("mount")
    if mount is not None:
        blob = await reg.blobs.mount(name, mount, args.get("from"))
        if blob is not None:
            return _created(name, blob)
        # Nothing to mount: fall back to an ordinary session, as the spec asks.
        return _in_progress(await reg.uploads.start(name))
    algorithm = args.get("digest-algorithm")
    if algorithm is not None and not is_supported_algorithm(algorithm):
        raise Unsupported(f"digest algorithm {algorithm[:40]!r} is not supported")
    digest = args.get("digest")
    if digest is not None:
        blob = await reg.uploads.monolithic(name, digest, body_chunks(), content_length())
        return _created(name, blob)
    return _in_progress(await reg.uploads.start(name))


@bp.route("/v2/<path:name>/blobs/uploads/<upload_id>", methods=["GET"])
async def upload_status(name: str, upload_id: str) -> Response:
    return _in_progress(await registry().uploads.status(name, upload_id), 204)


@bp.route("/v2/<path:name>/blobs/uploads/<upload_id>", methods=["PATCH"])
async def append_chunk(name: str, upload_id: str) -> Response:
    start, length = _chunk_bounds()
    try:
        status = await registry().uploads.append(
            name, upload_id, body_chunks(), start=start, length=length
        )
    except RangeInvalid as exc:
        return _range_error(name, upload_id, exc)
    return _in_progress(status)


@bp.route("/v2/<path:name>/blobs/uploads/<upload_id>", methods=["PUT"])
async def finish_upload(name: str, upload_id: str) -> Response:
    start, length = _chunk_bounds()
    try:
        blob = await registry().uploads.finish(
            name, upload_id, request.args.get("digest"), body_chunks(), start=start, length=length
        )
    except RangeInvalid as exc:
        return _range_error(name, upload_id, exc)
    return _created(name, blob)


@bp.route("/v2/<path:name>/blobs/uploads/<upload_id>", methods=["DELETE"])
async def cancel_upload(name: str, upload_id: str) -> Response:
    await registry().uploads.cancel(name, upload_id)
    return empty(204, {})
