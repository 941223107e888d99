"""Request bodies into storage: received, hashed and written in bounded pieces.

Upload sessions (regd.registry.uploads) hand a body here with its writer and the running
hash; nothing here knows about sessions, leases or metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

import trio

from regd.errors import SizeInvalid
from regd.oci.digest import Hasher
from regd.registry.tasks import task_group
from regd.storage import Writer

# Bytes gathered before one hand-off to a worker thread: large enough that thread
# switches cost little, small enough to bound memory per request.
WRITE_CHUNK = 1024 * 1024

# Chunks that may wait between the receiving and the storing stage of one upload.
PIPELINE_DEPTH = 2


async def pump(
    body: AsyncIterable[bytes], writer: Writer, hasher: Hasher | None, length: int | None
) -> int:
    """Copy a request body to storage, hashing on the way, in bounded pieces.

    Receiving and storing run as two stages joined by a small channel, so a chunk is
    hashed and written (in one hand-off to the writer's worker thread: a hop costs the
    event loop about as much as the hashing saves it) while the next one arrives.
    Memory stays bounded by the channel's capacity times WRITE_CHUNK (or the pieces the
    body arrives in, when they are larger).
    """
    also = None if hasher is None else hasher.update
    if length is not None and length <= WRITE_CHUNK:
        # A small body (a config, a small layer): one hash and one write, no stages.
        data = await gather(body, length)
        size = len(data)
        if data:
            await writer.write(data, also)
        return size

    received = 0
    to_writer, for_writer = trio.open_memory_channel[bytes](PIPELINE_DEPTH)

    async def write_stage() -> None:
        async with for_writer:
            async for data in for_writer:
                await writer.write(data, also)

    async with task_group() as nursery:
        nursery.start_soon(write_stage)
        async with to_writer:
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in body:
                if not chunk:
                    continue
                received += len(chunk)
                if length is not None and received > length:
                    raise SizeInvalid(
                        f"the request body is longer than the announced {length} bytes"
                    )
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= WRITE_CHUNK:
                    data = b"".join(pending)
                    pending, pending_size = [], 0
                    await to_writer.send(data)
            if pending:
                await to_writer.send(b"".join(pending))
    return received


async def gather(body: AsyncIterable[bytes], length: int) -> bytes:
    """A body announced as `length` bytes (small), in one piece; more is refused."""
    parts: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > length:
            raise SizeInvalid(f"the request body is longer than the announced {length} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def receive_small(body: AsyncIterable[bytes], length: int) -> bytes:
    """A small body whole, exactly as long as announced."""
    data = await gather(body, length)
    if len(data) != length:
        raise SizeInvalid(
            f"received {len(data)} bytes but the request announced {length}",
            {"received": len(data), "expected": length},
        )
    return data
