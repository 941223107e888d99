"""A closed connection, and a request that failed, must be freed by reference counting.

Whatever a reference cycle holds waits for a full garbage collection; after a burst of
thousands of connections that garbage lies interleaved with live objects, and Python's
allocator can then hand none of its memory back. So these tests turn the collector off
and check that the objects are gone the moment the last plain reference to them goes.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from regd.client.tasks import task_group
from regd.connections import Limits, server_class


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Held:
    """Something a failing request's frame holds (its connection, say)."""


async def fail(held: Held) -> None:
    await trio.sleep(0)
    raise ValueError("the request failed")


async def test_a_failed_task_group_leaves_no_cycle() -> None:
    held = Held()
    alive = weakref.ref(held)
    with no_collection():
        try:
            async with task_group() as nursery:
                # A sibling asleep when the body fails: trio cancels it from inside the
                # nursery's own exit, whose frame then holds the Cancelled.
                nursery.start_soon(trio.sleep_forever)
                await fail(held)
        except ValueError:
            pass
        del held
        assert alive() is None


async def test_a_failed_task_group_still_raises_the_error_alone() -> None:
    async def failing_group() -> None:
        async with task_group() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await fail(Held())

    with pytest.raises(ValueError, match="the request failed") as raised:
        await failing_group()
    assert raised.value.__suppress_context__
    assert not isinstance(raised.value.__context__, BaseExceptionGroup)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_closed_connection_leaves_no_cycle() -> None:
    limits = Limits(
        max_connections=10, max_connections_per_client=0, header_timeout=10, body_timeout=10
    )
    server_side, client_side = trio.socket.socketpair()
    client = trio.SocketStream(client_side)
    connection = server_class(limits)(
        wrap_app(app, 0, "asgi"), Config(), WorkerContext(None), {}, trio.SocketStream(server_side)
    )
    alive = weakref.ref(connection)
    with no_collection():
        # A guard against a hang, not a timing check.
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.run)
                await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"ok"):
                    answer += await client.receive_some(4096)
                await client.aclose()
        assert answer.startswith(b"HTTP/1.1 200")
        assert limits.open == 0
        del connection, nursery
        assert alive() is None
