"""Answers written straight to the socket: a client that reads slowly gets all of it, one
that stops reading is dropped after send_timeout.

Each test serves one connection in process (regd.connections over a socket pair) on
trio's virtual clock, so the timeouts pass without waiting for them.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from regd.connections import Limits, server_class

SEND_TIMEOUT = 5.0
# More than the kernel buffers of a socket pair hold, so the server's writes stall.
LARGE = 16 * 1024 * 1024
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def large_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-length", str(LARGE).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"x" * LARGE})


def serve(limits: Limits) -> tuple[Any, trio.SocketStream]:
    server_side, client_side = trio.socket.socketpair()
    server = server_class(limits)(
        wrap_app(large_answer, 0, "asgi"),
        Config(),
        WorkerContext(None),
        {},
        trio.SocketStream(server_side),
    )
    return server, trio.SocketStream(client_side)


def limits() -> Limits:
    return Limits(
        max_connections=10,
        max_connections_per_client=0,
        header_timeout=60,
        body_timeout=60,
        send_timeout=SEND_TIMEOUT,
    )


async def test_a_slow_reader_gets_the_whole_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    caps = limits()
    server, client = serve(caps)
    received = b""
    # A guard against a hang (virtual time), not a timing check.
    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            await client.send_all(REQUEST)
            head_end = -1
            while head_end < 0 or len(received) < head_end + 4 + LARGE:
                # Slower than the server writes, each pause under send_timeout.
                await trio.sleep(SEND_TIMEOUT / 2)
                chunk = await client.receive_some(256 * 1024)
                assert chunk, "the server closed the connection part way"
                received += chunk
                head_end = received.find(b"\r\n\r\n")
            await client.aclose()
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) == head_end + 4 + LARGE
    assert caps.open == 0


async def test_a_reader_that_stops_is_dropped_after_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    caps = limits()
    server, client = serve(caps)
    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            await client.send_all(REQUEST)
            started = trio.current_time()
            # The client reads nothing: the server gives up and the connection ends
            # without the client's help.
    assert SEND_TIMEOUT <= trio.current_time() - started < 10 * SEND_TIMEOUT
    assert caps.open == 0
    await client.aclose()
