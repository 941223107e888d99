"""The s3 driver's reader: one streamed GET, going on as ranged GETs when slow."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from regd.storage.base import StorageError
from regd.storage.s3._common import MiB, _InThread

if TYPE_CHECKING:
    from regd.storage.s3._driver import S3Driver

# A reader streams one GET's body in pieces of READ_PIECE (one read ahead) while that one
# connection delivers STREAM_ENOUGH bytes a second, judged from STREAM_PROBE bytes on: a
# store on the same machine or network (moto, MinIO) does, and there a GET more costs
# more than it brings (moto copies the whole object for every GET, ranged or not: a
# 256 MiB blob read as 8 MiB ranges came at 44 MB/s, as one stream at 819 MB/s). One
# connection to S3 brings about 100 MB/s, so below that the rest of the file comes as
# ranged GETs of RANGE_SIZE (S3's advice: 8-16 MB), RANGES_IN_FLIGHT at once and in
# order: at most RANGES_IN_FLIGHT + 1 ranges (40 MiB) held per reader, 4 of the
# driver's connection slots taken.
READ_PIECE = 4 * MiB
STREAM_PROBE = 2 * READ_PIECE
STREAM_ENOUGH = 150e6
RANGE_SIZE = 8 * MiB
RANGES_IN_FLIGHT = 4


def _timed_read(body: Any, size: int) -> tuple[bytes, float]:
    """Up to `size` bytes of `body`, and the seconds the read took."""
    start = time.perf_counter()
    data: bytes = body.read(size)
    return data, time.perf_counter() - start


class _S3Reader:
    """Reads [offset, size) of one version of a file: first as one GET's body, streamed a
    piece at a time with the next piece read ahead (what a fast store serves best); if
    that connection turns out slow, the rest as ranged GETs, RANGES_IN_FLIGHT at most,
    each on a thread of its own holding a connection slot of the driver, handed on in
    order. The window of ranges opens one at a time as ranges are consumed, so a short
    read (a Range request of the API) fetches little that it does not use."""

    def __init__(
        self,
        driver: S3Driver,
        path: str,
        key: str,
        etag: str,
        offset: int,
        size: int,
        body: Any,
    ) -> None:
        self._driver = driver
        self._path = path
        self._key = key
        self._etag = etag
        self._size = size
        # Streaming: the body, the piece read ahead, what came and how long reads took.
        self._body = body
        self._ahead: _InThread[tuple[bytes, float]] | None = None
        self._streamed = 0
        self._stream_seconds = 0.0
        # Ranges: where the next one starts, how many may be in flight, those in flight.
        self._next = offset
        self._window = 1
        self._fetching: deque[_InThread[bytes]] = deque()
        self._piece = memoryview(b"")
        self._at = 0
        self._closed = False

    async def read(self, max_bytes: int) -> bytes:
        if self._closed:
            return b""
        if self._at >= len(self._piece):
            data = await (self._stream() if self._body is not None else self._take())
            self._piece, self._at = memoryview(data), 0
        data = bytes(self._piece[self._at : self._at + max_bytes])
        self._at += len(data)
        return data

    async def _stream(self) -> bytes:
        d = self._driver
        if self._ahead is None:
            data, seconds = await d._run(self._path, _timed_read, self._body, READ_PIECE)
        else:
            # Kept until it ended: a cancelled wait must not let the body be closed under
            # the read.
            await self._ahead.done.wait()
            ahead, self._ahead = self._ahead, None
            data, seconds = await ahead.wait()
        self._next += len(data)
        self._streamed += len(data)
        self._stream_seconds += seconds
        if self._next >= self._size or not data:
            await self._end_stream()
            if self._next != self._size:
                raise StorageError(f"{self._path} changed or vanished while being read")
        elif self._streamed >= STREAM_PROBE and self._streamed < STREAM_ENOUGH * max(
            self._stream_seconds, 1e-9
        ):
            # Too slow for one connection: the rest comes as ranges, from here on.
            await self._end_stream()
            await self._fetch_ahead()
        else:
            self._ahead = await d._start(self._path, _timed_read, self._body, READ_PIECE)
        return data

    async def _end_stream(self) -> None:
        body, self._body = self._body, None
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            # The body is not closed under a read still running on its thread.
            with trio.CancelScope(shield=True):
                await ahead.done.wait()
        if body is not None:
            body.close()

    async def _fetch_ahead(self) -> None:
        """Start ranges until the window is full or the file's end is asked for."""
        d = self._driver
        while len(self._fetching) < self._window and self._next < self._size:
            start, end = self._next, min(self._next + RANGE_SIZE, self._size)
            self._next = end
            call = await d._start(
                self._path, d._get_range, self._path, self._key, self._etag, start, end
            )
            self._fetching.append(call)

    async def _take(self) -> bytes:
        if not self._fetching:
            return b""
        data = await self._fetching[0].wait()
        self._fetching.popleft()
        self._window = min(self._window + 1, RANGES_IN_FLIGHT)
        # The next ranges travel while the caller sends this one on.
        await self._fetch_ahead()
        return data

    async def aclose(self) -> None:
        # Ranges still in flight end on their own threads (within the driver's timeouts)
        # and give their slots back then; nothing here is shared with them.
        self._closed = True
        self._fetching.clear()
        self._piece = memoryview(b"")
        await self._end_stream()
