"""Request parsing and response helpers shared by the API resources."""

from __future__ import annotations

import json
import re
from typing import Any, cast
from urllib.parse import quote

from quart import Response, request

from regd.api.exchange import EXCHANGE_KEY, Exchange
from regd.errors import BlobUploadInvalid, SizeInvalid

_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?$")
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


class RangeNotSatisfiable(Exception):
    pass


def exchange() -> Exchange:
    """The request's exchange, for Quart handlers (data-plane handlers are passed it)."""
    return cast(Exchange, cast(dict[str, Any], request.scope)[EXCHANGE_KEY])


def json_response(
    doc: Any, status: int = 200, headers: dict[str, str] | None = None, content_type: str = ""
) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":")),
        status=status,
        content_type=content_type or "application/json",
        headers=headers,
    )


def content_length(raw: str | None) -> int | None:
    """A Content-Length header's value, checked."""
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise SizeInvalid(f"invalid Content-Length {raw[:30]!r}")
    return int(raw)


def content_range(raw: str | None) -> tuple[int, int] | None:
    """The inclusive byte range a chunk claims, from its Content-Range header."""
    if raw is None:
        return None
    match = _CONTENT_RANGE.match(raw.strip())
    if not match:
        raise BlobUploadInvalid(f"malformed Content-Range {raw[:60]!r}; expected START-END")
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise BlobUploadInvalid(f"Content-Range {raw[:60]!r} ends before it starts")
    return start, end


def byte_range(raw: str | None, size: int) -> tuple[int, int] | None:
    """The single range a GET's Range header asks for, as (start, end inclusive); None for
    the whole."""
    if raw is None:
        return None
    match = _RANGE.match(raw.strip())
    if not match or (not match[1] and not match[2]):
        return None  # Unknown or multi-range syntax: RFC 9110 allows ignoring it.
    if match[1]:
        start = int(match[1])
        end = int(match[2]) if match[2] else size - 1
    else:
        suffix = int(match[2])
        if suffix == 0:
            raise RangeNotSatisfiable()
        start, end = max(size - suffix, 0), size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable()
    return start, min(end, size - 1)


def next_link(path: str, n: int, last: str, **extra: str) -> str:
    query = f"n={n}&last={quote(last, safe='')}"
    for key, value in extra.items():
        query += f"&{key}={quote(value, safe='')}"
    return f'<{path}?{query}>; rel="next"'


def stale_warning(cause: str) -> str:
    """The `Warning` of an answer a mirror served from its cache because its upstream
    failed (RFC 7234's warn-code 110), the cause made fit for a header."""
    text = cause.encode("latin-1", "replace").decode("latin-1").replace('"', "'")[:300]
    return f'110 regd "Response is Stale: {text.replace(chr(10), " ")}"'
