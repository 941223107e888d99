"""Who and which request a change came from, as events report it (regd.metadata.outbox)."""

from __future__ import annotations

from collections.abc import Mapping

from quart import request

from regd.api.exchange import Exchange
from regd.api.http import exchange
from regd.metadata import Origin


def origin_of(x: Exchange, headers: Mapping[str, str]) -> Origin:
    """The request behind a change, as events report it; `headers` lower-cased."""
    host = headers.get("host", "")
    if x.viewer is not None and x.viewer.identity.name:
        actor = x.viewer.identity.name
    else:
        actor = x.user or ""
    return Origin(
        request_id=str(x.request_id),
        addr=x.remote or "",
        host=host,
        method=x.method,
        useragent=headers.get("user-agent", ""),
        actor=actor,
        base_url=f"{x.scheme}://{host}" if host else "",
    )


def quart_origin() -> Origin:
    """origin_of for a Quart handler."""
    return origin_of(exchange(), {k.lower(): v for k, v in request.headers.items()})
