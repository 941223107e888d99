"""What this process knows of revoked credentials, never more than REFRESH seconds old.

Access tokens and remembered Basic logins are checked without the database: they outlive a
revoked machine token, a disabled or removed account or a changed password unless something
tells every process. The change writes a row (regd.metadata.revocations); `Revocations` is
each process's copy of those rows, consulted on every authenticated request.

The copy is refreshed once it is REFRESH/2 old by a task of its own (one at a time), so a
request nearly never waits: it decides with the copy it has while that is younger than
REFRESH, and waits for the refresh only past that. A refresh that reads nothing new costs one
primary-key read. When the database gives no answer within PATIENCE, a request whose copy is
too old gets MetadataError (503): it is never answered from an older copy, and never hangs.

What a revocation voids:
- of a machine token: every access token and remembered login made with it;
- of a password (changed, or the account removed): what was issued for that password, by
  its stamp, so a new password's tokens issued in the same second live on;
- of a disabled account: everything of the account checked or issued up to SETTLE after it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import trio

from regd.auth.tokens import TokenClaims
from regd.clock import Clock
from regd.metadata import MetadataStore
from regd.metadata.records import MetadataError
from regd.metadata.revocations import ACCOUNT, KEEP, MACHINE_TOKEN, Revocation, read_revocations

log = logging.getLogger("regd.auth")

REFRESH = 2.0
# How long a request waits for a refresh before it is answered 503.
PATIENCE = 5.0
# After a failed refresh, the next one starts no sooner than this (seconds): a database that
# is down is not asked again by every request, nor logged about by each.
RETRY = 0.5
# A disabled account's credentials checked or issued up to this long after the change are
# void too: a process may have issued a token from a remembered login with a copy up to
# REFRESH old, an access token's iat is rounded down to the second, and replicas' clocks are
# a little apart. Re-enabling the account within this time leaves its first tokens refused.
SETTLE = REFRESH + 2.0

_NEVER = -math.inf


@dataclass(slots=True)
class _Account:
    """One account's revocations: `until`, the latest disabling (+ SETTLE); `stamps`, the
    stamps of passwords it no longer has, with when; `stamped_until`, the latest of those
    (+ SETTLE), for tokens that carry no stamp (issued before access tokens did)."""

    until: float = _NEVER
    stamped_until: float = _NEVER
    stamps: dict[str, float] = field(default_factory=dict)

    def voids(self, checked_at: float, stamp: str | None, machine: bool) -> bool:
        if checked_at <= self.until:
            return True
        if machine:
            # A machine token is a secret of its own: the owner's password does not back it.
            return False
        if stamp is None:
            return checked_at <= self.stamped_until
        return stamp in self.stamps


class _Flight:
    """One refresh, which every request that needs it waits for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.problem: str | None = None


class Revocations:
    """This process's copy of the revocations in `store`."""

    def __init__(
        self,
        store: MetadataStore,
        clock: Clock,
        *,
        refresh: float = REFRESH,
        patience: float = PATIENCE,
    ) -> None:
        self._store = store
        self._clock = clock
        self._now = clock.now  # bound once: `current` runs on every authenticated request
        self._refresh = refresh
        self._soft = refresh / 2
        self._patience = patience
        self._generation = 0
        self._tokens: dict[str, float] = {}
        self._accounts: dict[str, _Account] = {}
        # When the last refresh began: the copy holds every revocation committed before.
        self._read_at = _NEVER
        # A refresh that began before this is no news (see `expire`).
        self._expired_at = _NEVER
        self._flight: _Flight | None = None
        self._failed: str | None = None
        self._retry_at = _NEVER  # trio's clock

    def current(self) -> bool:
        """Whether the copy is young enough that nothing needs doing: no I/O, no await."""
        age = self._now() - self._read_at
        # A clock that went backwards makes the copy's age unknown: read again.
        return 0.0 <= age < self._soft

    def _young(self) -> bool:
        age = self._clock.now() - self._read_at
        return 0.0 <= age < self._refresh

    async def catch_up(self) -> None:
        """Start a refresh if none runs; wait for it if the copy is too old to decide with.
        MetadataError when it is and the database did not answer within `patience`."""
        deadline = trio.current_time() + self._patience
        while True:
            flight = self._flight
            if flight is None:
                if trio.current_time() < self._retry_at:
                    if self._young():
                        return
                    raise MetadataError(f"cannot read revocations: {self._failed}")
                flight = self._flight = _Flight()
                trio.lowlevel.spawn_system_task(self._carry_out, flight)
            if self._young():
                return
            # The refresh runs in a task of its own: a request that gives up waiting leaves
            # it to finish, and the next one waits for the same refresh instead of piling up
            # another.
            with trio.move_on_at(deadline):
                await flight.done.wait()
            if self._young():
                return
            if not flight.done.is_set() or flight.problem is not None:
                problem = flight.problem or f"no answer within {self._patience:g} s"
                raise MetadataError(f"cannot read revocations: {problem}")
            # It began before `expire`: read once more.

    def expire(self) -> None:
        """Read again before the next decision (this process has just revoked something)."""
        self._read_at = _NEVER
        self._expired_at = self._clock.now()

    async def _carry_out(self, flight: _Flight) -> None:
        try:
            began = self._clock.now()
            news = await read_revocations(self._store, self._generation)
            if news.everything:
                self._tokens.clear()
                self._accounts.clear()
            for row in news.rows:
                self._learn(row)
            if news.rows:
                self._forget_old(began)
            self._generation = news.generation
            if began >= self._expired_at:
                self._read_at = began
        except Exception as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            flight.problem = self._failed = lines[0] if lines else type(exc).__name__
            self._retry_at = trio.current_time() + RETRY
            log.warning("revocations not refreshed: %s", flight.problem)
        finally:
            self._flight = None
            flight.done.set()

    def _learn(self, row: Revocation) -> None:
        if row.kind == MACHINE_TOKEN:
            self._tokens[row.subject] = row.at
        elif row.kind == ACCOUNT:
            entry = self._accounts.setdefault(row.subject, _Account())
            if row.stamp is None:
                entry.until = max(entry.until, row.at + SETTLE)
            else:
                entry.stamps[row.stamp] = row.at
                entry.stamped_until = max(entry.stamped_until, row.at + SETTLE)

    def _forget_old(self, now: float) -> None:
        """Drop what the database no longer keeps either: no credential lives that long."""
        horizon = now - KEEP
        self._tokens = {k: at for k, at in self._tokens.items() if at >= horizon}
        for name in list(self._accounts):
            entry = self._accounts[name]
            entry.stamps = {k: at for k, at in entry.stamps.items() if at >= horizon}
            if not entry.stamps and entry.until - SETTLE < horizon:
                del self._accounts[name]

    # -- judging credentials (the copy must be current: see `current` and `catch_up`) -----

    def voids_token(self, claims: TokenClaims) -> bool:
        """Whether one of our access tokens is revoked."""
        if claims.token_id is not None and claims.token_id in self._tokens:
            return True
        entry = None if claims.subject is None else self._accounts.get(claims.subject)
        if entry is None:
            return False
        issued = _NEVER if claims.issued_at is None else claims.issued_at
        return entry.voids(issued, claims.password_stamp, claims.token_id is not None)

    def voids_login(
        self, name: str | None, token_id: str | None, stamp: str | None, checked_at: float
    ) -> bool:
        """Whether a remembered login, checked against the database at `checked_at`, is."""
        if token_id is not None and token_id in self._tokens:
            return True
        entry = None if name is None else self._accounts.get(name)
        if entry is None:
            return False
        return entry.voids(checked_at, stamp, token_id is not None)
