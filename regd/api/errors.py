"""The one place where registry errors become HTTP answers."""

from __future__ import annotations

import json
import logging
from typing import Any

from quart import Response
from werkzeug.exceptions import HTTPException

from regd import errors as e

log = logging.getLogger("regd.api")

# Most specific class first: the first isinstance match wins.
STATUS: tuple[tuple[type[e.RegistryError], int], ...] = (
    (e.RangeInvalid, 416),
    (e.ManifestTooLarge, 413),
    (e.BlobUnknown, 404),
    (e.BlobUploadUnknown, 404),
    (e.ManifestUnknown, 404),
    (e.NameUnknown, 404),
    (e.Denied, 403),
    (e.Unauthorized, 401),
    (e.Conflict, 409),
    (e.RegistryError, 400),
)


def status_of(error: e.RegistryError) -> int:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return 400


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    entry: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}, separators=(",", ":")).encode()


def error_response(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(code, message, detail),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def on_registry_error(error: e.RegistryError) -> Response:
    return error_response(status_of(error), error.code, error.message, error.detail)


async def on_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    if status == 404:
        return error_response(404, "NOT_FOUND", "no such endpoint in the registry API")
    if status == 405:
        return error_response(405, "UNSUPPORTED", "method not allowed on this endpoint")
    if status == 413:
        return error_response(413, "SIZE_INVALID", "request body too large")
    if status == 408:
        return error_response(408, "BLOB_UPLOAD_INVALID", "request body timed out")
    return error_response(status, "UNSUPPORTED", error.description or error.name)


def backend_failure(error: e.BackendError) -> tuple[int, str, str, dict[str, str]]:
    """Log a failure of storage or database; the (status, code, message, headers) to answer.

    Not the client's fault: the cause goes to the log, the client is told to retry."""
    log.error("backend failure: %s", error, exc_info=error)
    return (
        503,
        "UNAVAILABLE",
        f"the registry's {error.kind} failed; try again",
        {"Retry-After": str(error.retry_after)},
    )


async def on_backend_error(error: e.BackendError) -> Response:
    status, code, message, headers = backend_failure(error)
    return error_response(status, code, message, headers=headers)


def install(app: Any) -> None:
    app.register_error_handler(e.RegistryError, on_registry_error)
    app.register_error_handler(HTTPException, on_http_exception)
    app.register_error_handler(e.BackendError, on_backend_error)
