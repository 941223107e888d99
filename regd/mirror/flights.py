"""Single-flight: concurrent requests for one thing cause one upstream fetch per process.

`Flights` is for small things fetched within a request (manifests, tag checks): the first
caller fetches, the others wait for its result. `BlobFetch` is one blob on its way into
storage, fetched by a task of the mirror's own: the first client reads it as it arrives,
the others wait until it is stored and read it from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

from regd.errors import BackendError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: Exception | None = None
        self.finished = False


class Flights(Generic[K, V]):
    def __init__(self) -> None:
        self._inflight: dict[K, _Flight[V]] = {}

    async def run(
        self, key: K, fetch: Callable[[], Awaitable[V]], *, wait: float, on_timeout: Exception
    ) -> V:
        """`fetch()`'s result, shared with every caller that asks for `key` meanwhile.

        A follower waits at most `wait` seconds (then `on_timeout` is raised). When the
        leader's request is cancelled (its client left), a follower fetches itself."""
        while True:
            flight = self._inflight.get(key)
            if flight is None:
                flight = _Flight[V]()
                self._inflight[key] = flight
                try:
                    value = await fetch()
                    flight.value, flight.finished = value, True
                    return value
                except Exception as exc:
                    flight.error, flight.finished = exc, True
                    raise
                finally:
                    del self._inflight[key]
                    flight.done.set()
            with trio.move_on_after(wait):
                await flight.done.wait()
            if not flight.done.is_set():
                raise on_timeout
            if flight.error is not None:
                raise flight.error
            if flight.finished:
                return flight.value  # type: ignore[return-value]


class FillAbandoned(BackendError):
    """A first client's stream ends early: the fill went on without it."""

    kind = "mirror"


class Stored:
    """Sent to a first client instead of bytes: the blob came into storage some other way
    (another replica fetched it); read it from there."""


class End:
    """Sent to a first client after the last piece: the blob is verified and stored."""


STORED = Stored()
END = End()
Item = bytes | Exception | Stored | End


class BlobFetch:
    """One blob on its way from the upstream into storage."""

    def __init__(self, digest: str, size: int) -> None:
        self.digest = digest
        self.size = size
        self.received = 0
        # Signs of life other than bytes (another replica's fill still holding its lease).
        self.beats = 0
        self.done = trio.Event()
        self.error: Exception | None = None
        self._to_reader: trio.MemorySendChannel[Item] | None = None

    def attach_reader(self) -> trio.MemoryReceiveChannel[Item]:
        """The first client's end: the bytes as they arrive (a few chunks are buffered)."""
        send, receive = trio.open_memory_channel[Item](4)
        self._to_reader = send
        return receive

    async def give(self, item: Item, patience: float) -> None:
        """Pass `item` on to the first client. A client gone, or one that takes nothing for
        `patience` seconds, is dropped: the fetch goes on for the others."""
        if self._to_reader is None:
            return
        with trio.move_on_after(patience) as scope:
            try:
                await self._to_reader.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop_reader()
        if scope.cancelled_caught:
            self._drop_reader()

    def _drop_reader(self) -> None:
        if self._to_reader is not None:
            self._to_reader.close()
            self._to_reader = None

    async def finish(self, error: Exception | None, patience: float) -> None:
        self.error = error
        if error is not None:
            await self.give(error, patience)
        self._drop_reader()
        self.done.set()

    async def wait(self, stall: float) -> bool:
        """Wait until the fetch ends, as long as it keeps receiving bytes: False when it
        made no progress for `stall` seconds."""
        while True:
            seen = (self.received, self.beats)
            with trio.move_on_after(stall):
                await self.done.wait()
                return True
            if (self.received, self.beats) == seen:
                return False


async def chunks_of(
    receive: trio.MemoryReceiveChannel[Item],
    open_stored: Callable[[], Awaitable[AsyncIterable[bytes]]],
) -> AsyncIterator[bytes]:
    """What the first client reads: arriving bytes, or the stored blob, or the failure."""
    try:
        async for item in receive:
            if isinstance(item, bytes):
                yield item
            elif isinstance(item, Stored):
                async for chunk in await open_stored():
                    yield chunk
                return
            elif isinstance(item, End):
                return
            else:
                raise item
        # The fill dropped this client (it read nothing for too long).
        raise FillAbandoned("the client read too slowly; the transfer was dropped")
    finally:
        receive.close()
