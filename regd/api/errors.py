"""The one place where failures become HTTP answers, for both dispatchers.

Every error body uses a code from the distribution spec's table. Where the spec has no
code for a failure, the nearest one is chosen and the message says exactly what happened:

- a backend failure (503) and a full disk (507) answer TOOMANYREQUESTS: the only code that
  means "not now, come back later", and, as the spec asks of it, with Retry-After;
- an endpoint the API does not have (404), a refused method (405) and a malformed
  request parameter or admin document (400) answer UNSUPPORTED, "a missing implementation
  or invalid set of parameters";
- an operation that collides with the same one running elsewhere (409, e.g. two garbage
  collections) answers TOOMANYREQUESTS: "not now".
- an unexpected failure (500) answers no body at all: no code in the table says "the
  registry is broken", and a wrong code would mislead a client more than none.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from werkzeug.exceptions import HTTPException

from regd import errors as e
from regd.storage import StorageFull

log = logging.getLogger("regd.api")

JSON_TYPE = "application/json"

# Most specific class first: the first isinstance match wins.
STATUS: tuple[tuple[type[e.RegistryError], int], ...] = (
    (e.RangeInvalid, 416),
    (e.ReadOnlyMode, 405),
    (e.ManifestTooLarge, 413),
    (e.BlobUnknown, 404),
    (e.BlobUploadUnknown, 404),
    (e.ManifestUnknown, 404),
    (e.NameUnknown, 404),
    (e.Denied, 403),
    (e.Unauthorized, 401),
    (e.Conflict, 409),
    (e.TooManyRequests, 429),
    (e.RegistryError, 400),
)

# Failures of the HTTP layer itself, by status: (code, message).
HTTP_FAILURES: dict[int, tuple[str, str]] = {
    400: ("UNSUPPORTED", "malformed request"),
    404: ("UNSUPPORTED", "no such endpoint in the registry API"),
    405: ("UNSUPPORTED", "method not allowed on this endpoint"),
    408: ("BLOB_UPLOAD_INVALID", "request body timed out"),
    413: ("SIZE_INVALID", "request body too large"),
}

# An answer: status, headers (lower-case names), body.
Answer = tuple[int, dict[str, str], bytes]


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


def refusal(status: int, message: str | None = None) -> Answer:
    """A refusal by the HTTP layer (no such endpoint, method not allowed, ...)."""
    code, default = HTTP_FAILURES.get(status, ("UNSUPPORTED", "request refused"))
    return status, {"content-type": JSON_TYPE}, error_body(code, message or default)


def method_not_allowed(method: str) -> Answer:
    return refusal(405, f"method {method} is not allowed on this endpoint")


def answer_for(error: BaseException, method: str, path: str) -> Answer:
    """The answer to a request whose handler raised `error`; logs what the operator needs."""
    if isinstance(error, e.RegistryError):
        headers = {"content-type": JSON_TYPE}
        if isinstance(error, e.TooManyRequests):
            headers["retry-after"] = str(error.retry_after)
        headers.update(error.headers)
        return status_of(error), headers, error_body(error.code, error.message, error.detail)
    if isinstance(error, e.BackendError):
        # Not the client's fault, and not a bug: one line for the operator, no traceback.
        cause = error.__cause__ or error.__context__
        log.error(
            "backend failure method=%s path=%s kind=%s error=%s%s",
            method,
            path,
            error.kind,
            error,
            f" cause={cause!r}" if cause is not None else "",
        )
        full = isinstance(error, StorageFull)
        status = 507 if full else 503
        message = (
            "the registry's storage is full; try again when space has been freed"
            if full
            else f"the registry's {error.kind} failed; try again"
        )
        headers = {"content-type": JSON_TYPE, "retry-after": str(error.retry_after)}
        return status, headers, error_body("TOOMANYREQUESTS", message)
    if isinstance(error, HTTPException) and error.code is not None and error.code < 500:
        if error.code == 405:
            return method_not_allowed(method)
        return refusal(error.code)
    log.error("unexpected failure method=%s path=%s", method, path, exc_info=error)
    return 500, {}, b""
