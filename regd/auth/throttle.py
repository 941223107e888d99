"""Throttling of failed logins, per account and per client address.

In-process and bounded: each replica counts the failures it sees, so behind N replicas an
attacker gets up to N times the budget before every replica refuses; the budget is small
enough (default 10 failures per 5 minutes per key) that this stays far from a useful
guessing rate. Memory is bounded by `max_keys`: the least recently failed keys are
forgotten first.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from regd.auth.errors import Throttled
from regd.clock import Clock


@dataclass(slots=True)
class _Window:
    started: float
    failures: int


class LoginThrottle:
    def __init__(
        self,
        clock: Clock,
        *,
        max_failures: int = 10,
        window: float = 300.0,
        max_keys: int = 10_000,
    ) -> None:
        self._clock = clock
        self._max = max_failures
        self._window = window
        self._max_keys = max_keys
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def _keys(self, account: str | None, address: str | None) -> list[str]:
        keys = []
        if account:
            keys.append("a:" + account)
        if address:
            keys.append("r:" + address)
        return keys

    def check(self, account: str | None, address: str | None) -> None:
        """Throttled if either key has used up its failures; call before checking a
        password, so a throttled guess costs no bcrypt."""
        now = self._clock.now()
        for key in self._keys(account, address):
            window = self._windows.get(key)
            if window is None:
                continue
            if now - window.started >= self._window:
                del self._windows[key]
                continue
            if window.failures >= self._max:
                retry = max(1, math.ceil(window.started + self._window - now))
                what = "account" if key.startswith("a:") else "client address"
                raise Throttled(
                    f"too many failed logins for this {what}; try again in {retry} s", retry
                )

    def failed(self, account: str | None, address: str | None) -> None:
        now = self._clock.now()
        for key in self._keys(account, address):
            window = self._windows.get(key)
            if window is None or now - window.started >= self._window:
                window = self._windows[key] = _Window(now, 0)
            window.failures += 1
            self._windows.move_to_end(key)
        while len(self._windows) > self._max_keys:
            self._windows.popitem(last=False)

    def succeeded(self, account: str | None) -> None:
        """A good login clears its account's count; the address keeps its own, so one valid
        account does not reset a guesser's budget for the others."""
        if account:
            self._windows.pop("a:" + account, None)
