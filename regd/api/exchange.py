"""What both dispatchers share: one request's context, its common headers and its log line.

The data plane (regd.api.direct) and the Quart control plane are two ways of running a
handler; everything around the handler is here, once. `RegdApp.__call__` makes the
`Exchange` for every HTTP request before either dispatcher sees it, so whatever must
happen to every request (deciding who is asking, above all) is one call in that place.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from regd.registry import Registry

if TYPE_CHECKING:
    from regd.api.auth import Viewer

access_log = logging.getLogger("regd.access")

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")

# Where Quart's handlers find the exchange: in the ASGI scope's extensions.
EXCHANGE_KEY = "regd.exchange"

REQUEST_ID_HEADER = b"x-request-id"
# An incoming request id is kept when it is this short and made of visible ASCII (it goes
# into log lines and answers as it is); otherwise the request gets an id of its own.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID)


# A new request id is 32 hex digits, as a uuid4's: 80 random bits drawn once per process
# and a 48-bit count of the process's requests. A uuid4 each read the system's randomness
# (a system call) for every request; the random part keeps ids of different workers,
# replicas and restarts apart all the same.
_ID_COUNT_BITS = 48
_ID_COUNT_MASK = (1 << _ID_COUNT_BITS) - 1


def _new_id_source() -> tuple[str, itertools.count[int]]:
    return secrets.token_hex(10), itertools.count()


_id_prefix, _id_count = _new_id_source()


def _fresh_ids_after_fork() -> None:
    # A forked child would otherwise repeat its parent's ids.
    global _id_prefix, _id_count
    _id_prefix, _id_count = _new_id_source()


os.register_at_fork(after_in_child=_fresh_ids_after_fork)


def new_request_id() -> str:
    return f"{_id_prefix}{next(_id_count) & _ID_COUNT_MASK:012x}"


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's id: the client's or a proxy's `X-Request-Id` when acceptable, else a
    new one (`new_request_id`)."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


class Exchange:
    """One request on its way through the application, and how it was answered."""

    __slots__ = (
        "length",
        "method",
        "path",
        "received",
        "registry",
        "remote",
        "request_id",
        "scheme",
        "sent",
        "started",
        "status",
        "user",
        "viewer",
    )

    def __init__(self, scope: Any, registry: Registry) -> None:
        self.registry = registry
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.scheme: str = scope.get("scheme", "http")
        client = scope.get("client")
        self.remote: str | None = client[0] if client else None
        self.started = time.perf_counter()
        # Ties a request's log lines, its answer and what it caused together, also
        # across the proxies in front that set X-Request-Id.
        self.request_id: str = request_id_from(scope["headers"])
        # Who is asking, for the log: a verified client certificate's name until
        # authentication says otherwise.
        self.user: str | None = None
        # Who is asking, as handlers see it (regd.api.auth); None when authentication is off.
        self.viewer: Viewer | None = None
        # Filled in as the answer starts.
        self.status = 0
        self.length: int | None = None
        # Body bytes taken in and sent out, counted when metrics are on.
        self.received = 0
        self.sent = 0


# Bytes of an unread request body read and dropped after an early answer (an error before
# the body was taken in), so the client, which sends its whole body before it reads the
# answer, gets to read it; a longer rest is not waited for, the connection is closed.
DRAIN_LIMIT = 64 * 1024 * 1024


def may_carry_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request announces a body (chunked, or a non-zero Content-Length)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def drain_body(receive: Any, limit: int = DRAIN_LIMIT) -> bool:
    """Read and drop what is left of a request body, up to `limit` bytes. True when the
    body's end was reached, so the connection can carry the next request."""
    taken = 0
    while taken <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return False
        taken += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


def framing_problem(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request's body framing is refused, or None.

    A body delimited both by Content-Length and by Transfer-Encoding is the shape of a
    request smuggled past a proxy that reads the other header (RFC 9112, section 6.3).
    """
    # ASGI servers hand header names over lower-cased.
    length = encoding = False
    for name, _ in headers:
        if name == b"content-length":
            length = True
        elif name == b"transfer-encoding":
            encoding = True
    if length and encoding:
        return "a request may not carry both Content-Length and Transfer-Encoding"
    return None


ACCESS_FORMAT = (
    "id=%(id)s method=%(method)s path=%(path)s status=%(status)d length=%(length)s "
    "ms=%(ms).1f remote=%(remote)s user=%(user)s"
)


def log_access(x: Exchange) -> None:
    if access_log.isEnabledFor(logging.INFO):
        # One mapping as the arguments: the text format renders it, the JSON one
        # (regd.observability.logs) keeps each field as a key.
        fields = {
            "id": x.request_id,
            "method": x.method,
            "path": x.path,
            "status": x.status,
            "length": x.length,
            "ms": round((time.perf_counter() - x.started) * 1000, 1),
            "remote": x.remote,
            "user": x.user or "-",
        }
        access_log.info(ACCESS_FORMAT, fields)
