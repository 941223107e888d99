"""The data plane of the API, answered straight from ASGI events.

Blob and manifest requests are nearly all of a registry's traffic: reads by the
thousand, and every byte pushed. For them Quart's request and response objects, context
locals and dispatch cost as much as the rest of a request together, and its request body
copies each chunk into a buffer of its own. So the application matches the routes under
`/v2/<name>/blobs/` and `/v2/<name>/manifests/` here first and answers them with plain
ASGI messages, reading bodies straight from the server; the version check, listings and
the admin API go on to Quart. The resource modules define the handlers; errors,
refusals, common headers and the access log are shared with Quart (regd.api.errors,
regd.api.exchange).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

import trio

from regd.api.errors import answer_for, log, method_not_allowed
from regd.api.exchange import API_VERSION, Exchange, drain_body, may_carry_body
from regd.api.http import content_length
from regd.errors import BackendError

# Where a plain-TCP connection offers its sendfile path in the scope's state: an
# `async (fd, offset, count) -> bool` (regd.connections); False means "send it yourself".
SEND_FILE_KEY = "regd.send_file"
SendFile = Callable[[int, int, int], Awaitable[bool]]


@runtime_checkable
class FileBody(Protocol):
    """A streamed body whose bytes lie in a local file."""

    def file_span(self) -> tuple[int, int, int] | None:
        """(descriptor, offset, length), or None when they cannot be sent from the file."""
        ...


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    # Lower-cased names; a repeated header keeps its last value.
    headers: Mapping[str, str]
    # The query string's parameters, in order.
    query: tuple[tuple[str, str], ...]
    receive: Any

    @property
    def head(self) -> bool:
        return self.method == "HEAD"

    def arg(self, name: str) -> str | None:
        """The first value of a query parameter."""
        return next((value for key, value in self.query if key == name), None)

    def arg_list(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]

    async def read(self, limit: int, too_large: Callable[[str], Exception]) -> bytes:
        """A small body whole; more than `limit` bytes raises `too_large(message)`."""
        length = content_length(self.headers.get("content-length"))
        if length is not None and length > limit:
            raise too_large(f"the request body is {length} bytes; the limit is {limit}")
        parts: list[bytes] = []
        total = 0
        async for chunk in self.body():
            total += len(chunk)
            if total > limit:
                raise too_large(f"the request body is over the {limit}-byte limit")
            parts.append(chunk)
        return b"".join(parts)

    async def body(self) -> AsyncIterator[bytes]:
        """The request body as the server delivers it.

        Reading straight from the server keeps its flow control: it buffers a few
        messages per request and stops reading the socket while they wait, so a blob
        arriving faster than the disk takes it stays out of memory.
        """
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # A streamed body of `length` bytes instead of `body`.
    stream: AsyncIterable[bytes] | None = None
    length: int | None = None
    # Headers that may appear more than once, sent after `headers`.
    repeated: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Exchange, Request, "re.Match[str]"], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Route:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler


def route(methods: set[str], pattern: str) -> Callable[[Handler], Route]:
    """A data-plane route; every method it lacks on its paths is refused with 405."""

    def wrap(handler: Handler) -> Route:
        return Route(frozenset(methods), re.compile(pattern), handler)

    return wrap


class Router:
    """Answers the requests its routes match; `handle` returns False for the rest."""

    def __init__(self, routes: tuple[Route, ...]):
        self._routes = routes

    async def handle(self, x: Exchange, scope: Mapping[str, Any], receive: Any, send: Any) -> bool:
        method, path = x.method, x.path
        refuse = False
        for candidate in self._routes:
            match = candidate.pattern.match(path)
            if match is not None:
                if method in candidate.methods:
                    break
                refuse = True
        else:
            if not refuse:
                return False
            await _send(x, Reply(*method_not_allowed(method)), send)
            return True
        query = scope.get("query_string", b"")
        body_left: list[bool] = []
        if may_carry_body(scope["headers"]):
            # Note when the body has been read to its end, so an error answer knows
            # whether a rest is left to take in.
            body_left.append(True)
            receive = _noting_the_end(receive, body_left)
        request = Request(
            method,
            path,
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            tuple(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else (),
            receive,
        )
        try:
            reply = await candidate.handler(x, request, match)
        except ClientDisconnected:
            # Nobody to answer; the handler has already rolled back what it began.
            return True
        except Exception as error:
            reply = Reply(*answer_for(error, method, path))
            # The handler stopped reading the body part way. The client sends its whole
            # body before it reads an answer, and the server delivers no more body once the
            # answer is complete: take the rest in first (bounded), then answer; and close
            # unless the rest ended within the bound.
            if body_left and body_left[0] and not await drain_body(receive):
                reply.headers["connection"] = "close"
        await _send(x, reply, send)
        if reply.stream is not None and not request.head:
            try:
                await _stream(reply.stream, receive, send, _send_file(scope), x)
            except* BackendError as failed:
                # The status line is gone: all that is left is to end the connection short
                # of the announced length, which every client takes for a failed transfer.
                # Returning without the body's end does that (the server closes it).
                log.error(
                    "transfer broken off method=%s path=%s status=%s error=%s",
                    method,
                    path,
                    reply.status,
                    failed.exceptions[0],
                )
        return True


def _noting_the_end(receive: Any, body_left: list[bool]) -> Any:
    """`receive`, clearing `body_left[0]` once the request body has ended."""

    async def noted() -> Any:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_left[0] = False
        return message

    return noted


async def _send(x: Exchange, reply: Reply, send: Any) -> None:
    """The status and headers, and the body unless it is streamed."""
    length = reply.length if reply.length is not None else len(reply.body)
    x.status, x.length = reply.status, length
    headers = [API_VERSION, (b"content-length", str(length).encode())]
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items())
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.repeated)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    if reply.stream is None or x.method == "HEAD":
        await send(
            {"type": "http.response.body", "body": b"" if x.method == "HEAD" else reply.body}
        )


def _send_file(scope: Mapping[str, Any]) -> SendFile | None:
    state = scope.get("state")
    return state.get(SEND_FILE_KEY) if isinstance(state, Mapping) else None


async def _stream(
    body: AsyncIterable[bytes],
    receive: Any,
    send: Any,
    send_file: SendFile | None = None,
    x: Exchange | None = None,
) -> None:
    """Send a long body, stopping (and closing the source) when the client goes away.

    The server drops what is sent after a disconnect; without watching for it, a gone
    client's blob would still be read to the end. A body in a local file goes by
    `send_file` where the connection offers it.
    """

    async def watch(cancel: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        try:
            span = (
                body.file_span() if send_file is not None and isinstance(body, FileBody) else None
            )
            if span is not None and send_file is not None:
                try:
                    sent = await send_file(*span)
                except trio.BrokenResourceError:
                    # The connection is gone; nothing more can be said on it.
                    return
                if sent and x is not None:
                    # These bytes never pass `send`, which counts the rest for metrics.
                    x.sent += span[2]
            else:
                sent = False
            if not sent:
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                with trio.CancelScope(shield=True):
                    await close()
        nursery.cancel_scope.cancel()
