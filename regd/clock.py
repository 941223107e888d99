"""Wall-clock time, injected.

Leases, TTLs and retention compare timestamps that other processes wrote into the
database, so they need wall-clock seconds since the epoch rather than a monotonic clock.
Everything that reads the time for such a decision takes a `Clock`, so tests can move
time forward instead of sleeping against a loaded machine.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; for tests about expiry."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not run backwards")
        self._now += seconds


SYSTEM_CLOCK = SystemClock()
