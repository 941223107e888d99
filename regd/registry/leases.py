"""Waiting for named leases held in the metadata, shared by every replica."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import trio

from regd.metadata import MetadataError, MetadataStore

# Placing or removing one blob file takes milliseconds; a lease outliving this was
# abandoned by a crashed process and may be taken over.
BLOB_LEASE_SECONDS = 60.0
# Leases a sweep or a repair takes on a batch of blobs at once: their rows and files are
# removed in one go, which may take a while on a slow object store.
SWEEP_LEASE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease taken for `ttl` seconds by a request that started at `asked_at` (trio clock).

    The metadata counts the lifetime from a moment after `asked_at`, so judging by it errs
    on the safe side.
    """

    name: str
    holder: str
    ttl: float
    asked_at: float

    def fresh(self) -> bool:
        """Whether at least half the lifetime is left: ample for a step of milliseconds."""
        return trio.current_time() - self.asked_at < self.ttl / 2


class Leases:
    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    async def acquire(
        self, name: str, *, ttl: float = BLOB_LEASE_SECONDS, wait: float = 30.0
    ) -> str:
        """Take the lease, waiting up to `wait` seconds; returns the holder token."""
        holder = str(uuid.uuid4())
        delay = 0.002
        with trio.move_on_after(wait):
            while True:
                if await self._metadata.acquire_lock(name, holder, ttl):
                    return holder
                await trio.sleep(delay)
                delay = min(delay * 2, 0.1)
        raise MetadataError(f"lease {name} stayed busy for {wait:.0f} s")

    async def try_acquire(self, name: str, *, ttl: float) -> str | None:
        holder = str(uuid.uuid4())
        return holder if await self._metadata.acquire_lock(name, holder, ttl) else None

    async def release(self, name: str, holder: str) -> None:
        with trio.CancelScope(shield=True):
            await self._metadata.release_lock(name, holder)
