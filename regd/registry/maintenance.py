"""Maintenance mode: writes refused on every replica, pulls and garbage collection go on.

The switch is a row every replica shares (regd.metadata.settings). Each process keeps what
it read for `refresh` seconds, so a request pays nothing for the check nearly always, and a
switch made through one replica holds on all of them within that time (at once on the
replica that made it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from regd.clock import SYSTEM_CLOCK, Clock
from regd.errors import ReadOnlyMode
from regd.metadata import MetadataStore
from regd.metadata.settings import get_setting, put_setting

SETTING = "maintenance"
# Longest operator message kept: it is repeated in every refusal.
MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class MaintenanceState:
    enabled: bool = False
    message: str | None = None
    since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "message": self.message, "since": self.since}


OFF = MaintenanceState()


class Maintenance:
    def __init__(
        self, metadata: MetadataStore, clock: Clock = SYSTEM_CLOCK, *, refresh: float = 2.0
    ) -> None:
        self._metadata = metadata
        self._clock = clock
        self._refresh = refresh
        self._state = OFF
        self._until = float("-inf")
        self._lock = trio.Lock()

    async def state(self) -> MaintenanceState:
        if trio.current_time() < self._until:
            return self._state
        async with self._lock:
            if trio.current_time() < self._until:
                return self._state
            doc = await get_setting(self._metadata, SETTING)
            self._remember(_state_of(doc))
            return self._state

    def _remember(self, state: MaintenanceState) -> None:
        self._state = state
        self._until = trio.current_time() + self._refresh

    async def check_writable(self) -> None:
        """Raise ReadOnlyMode while maintenance mode is on."""
        state = await self.state()
        if state.enabled:
            why = f": {state.message}" if state.message else ""
            raise ReadOnlyMode(
                f"the registry is in maintenance mode and refuses writes{why}; pulls still work",
                {"maintenance": state.to_json()},
            )

    async def switch(self, enabled: bool, message: str | None = None) -> MaintenanceState:
        if message is not None:
            message = " ".join(message.split())[:MAX_MESSAGE] or None
        state = MaintenanceState(enabled, message if enabled else None, self._clock.now())
        await put_setting(self._metadata, SETTING, state.to_json(), state.since or 0.0)
        self._remember(state)
        return state


def _state_of(doc: dict[str, Any] | None) -> MaintenanceState:
    if doc is None:
        return OFF
    enabled, message, since = doc.get("enabled") is True, doc.get("message"), doc.get("since")
    return MaintenanceState(
        enabled,
        message if enabled and isinstance(message, str) else None,
        float(since) if isinstance(since, int | float) else None,
    )
