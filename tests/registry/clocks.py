"""One time for a whole test: trio's, and the wall clock that leases are written with.

Lease expiry is decided in the database from wall-clock seconds, while the registry waits
and renews on trio's clock. Tests about leases run trio on a MockClock and give the store a
wall clock that moves with it, so a lease expires exactly when the test moves time on,
however loaded the machine.
"""

from __future__ import annotations

import trio

from regd.clock import Clock
from regd.metadata import MetadataStore


class TrioWallClock:
    """Seconds since the epoch that advance with the running trio clock.

    Readable from worker threads (the store computes lease times there): it only reads
    the clock object, never trio's run state."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._trio = trio.lowlevel.current_clock()
        self._offset = start - self._trio.current_time()

    def now(self) -> float:
        return self._offset + self._trio.current_time()


def open_store(url: str, clock: Clock) -> MetadataStore:
    """A store that reads `clock` for every time it writes or compares."""
    return MetadataStore(url, clock=clock)
