"""Keep-alive connections between requests: closed once idle for keep_alive_timeout or
when the server stops, never while an answer is under way, and at no task per request.

Each test serves one connection in process (regd.connections over a socket pair) on
trio's virtual clock, so the timeouts pass without waiting for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from regd.connections import Limits, server_class

KEEP_ALIVE = 5.0
SLOW_ANSWER = 3 * KEEP_ALIVE
REQUEST = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await trio.sleep(SLOW_ANSWER)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def get(self, path: str = "") -> bytes:
        await self.stream.send_all(REQUEST % path.encode())
        while b"ok" not in self.buffer:
            data = await self.stream.receive_some(4096)
            assert data, "the server closed the connection before answering"
            self.buffer += data
        answer, _, self.buffer = self.buffer.partition(b"ok")
        assert answer.startswith(b"HTTP/1.1 200")
        return answer

    async def closed(self) -> bool:
        """Whether the server has closed the connection: it sends nothing more."""
        return await self.stream.receive_some(4096) == b""


@asynccontextmanager
async def connection(context: WorkerContext) -> AsyncIterator[Client]:
    limits = Limits(
        max_connections=10, max_connections_per_client=0, header_timeout=60, body_timeout=60
    )
    config = Config()
    config.keep_alive_timeout = KEEP_ALIVE
    server_side, client_side = trio.socket.socketpair()
    server = server_class(limits)(
        wrap_app(app, 0, "asgi"), config, context, {}, trio.SocketStream(server_side)
    )
    # A guard against a hang (virtual time), not a timing check.
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            client = trio.SocketStream(client_side)
            yield Client(client)
            await client.aclose()
    assert limits.open == 0


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connection(WorkerContext(None)) as client:
        for _ in range(3):
            await client.get()
            # Idle for less than the timeout between requests: the connection stays.
            await trio.sleep(KEEP_ALIVE / 2)
        await client.get()
        idle_from = trio.current_time()
        assert await client.closed()
        assert trio.current_time() - idle_from >= KEEP_ALIVE


async def test_a_slow_answer_outlasts_the_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connection(WorkerContext(None)) as client:
        await client.get()
        await client.get("slow")
        # The idle time starts again once the slow answer is complete.
        idle_from = trio.current_time()
        await client.get()
        assert trio.current_time() - idle_from < KEEP_ALIVE
        assert await client.closed()


async def test_a_stopping_server_closes_idle_connections_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    context = WorkerContext(None)
    async with connection(context) as client:
        await client.get()
        stopped_at = trio.current_time()
        await context.terminated.set()
        assert await client.closed()
        assert trio.current_time() - stopped_at < KEEP_ALIVE


async def test_a_stopping_server_finishes_the_answer_under_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    context = WorkerContext(None)
    async with connection(context) as client:
        await client.get()

        async def stop_soon() -> None:
            await trio.sleep(1)
            await context.terminated.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_soon)
            await client.get("slow")
        assert await client.closed()


class SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def test_the_keep_alive_timer_starts_no_task_per_request() -> None:
    requests = 50
    counter = SpawnCounter()
    async with connection(WorkerContext(None)) as client:
        await client.get()
        trio.lowlevel.add_instrument(counter)
        try:
            for _ in range(requests):
                await client.get()
        finally:
            trio.lowlevel.remove_instrument(counter)
    # One task per request runs the application; hypercorn's own timer took another.
    assert counter.spawned == requests
