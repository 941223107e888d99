"""What both dispatchers share: one request's context, its common headers and its log line.

The data plane (regd.api.direct) and the Quart control plane are two ways of running a
handler; everything around the handler is here, once. `RegdApp.__call__` makes the
`Exchange` for every HTTP request before either dispatcher sees it, so whatever must
happen to every request (deciding who is asking, above all) is one call in that place.
"""

from __future__ import annotations

import itertools
import logging
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

_request_ids = itertools.count(1)


class Exchange:
    """One request on its way through the application, and how it was answered."""

    __slots__ = (
        "length",
        "method",
        "path",
        "registry",
        "remote",
        "request_id",
        "scheme",
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
        # Unique within the process; ties a request's log lines together.
        self.request_id = next(_request_ids)
        # Who is asking, for the log: a verified client certificate's name until
        # authentication says otherwise.
        self.user: str | None = None
        # Who is asking, as handlers see it (regd.api.auth); None when authentication is off.
        self.viewer: Viewer | None = None
        # Filled in as the answer starts.
        self.status = 0
        self.length: int | None = None


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


async def drain_body(receive: Any, limit: int = DRAIN_LIMIT) -> None:
    """Read and drop what is left of a request body, up to `limit` bytes."""
    taken = 0
    while taken <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        taken += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


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


def log_access(x: Exchange) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "id=%d method=%s path=%s status=%d length=%s ms=%.1f remote=%s user=%s",
            x.request_id,
            x.method,
            x.path,
            x.status,
            x.length,
            (time.perf_counter() - x.started) * 1000,
            x.remote,
            x.user or "-",
        )
