"""Named leases shared by all replicas (`blob:<digest>`, `gc`): taken, extended, released."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, delete, or_

from regd.metadata import schema as t
from regd.metadata.engine import Database, insert_for


class _LeaseStatements:
    def __init__(self, dialect: str) -> None:
        locks = t.locks
        # Takes the lease if it is free or expired, or extends it for its holder; :now.
        # RETURNING rather than rowcount: drivers disagree on an upsert's rowcount.
        lock = insert_for(dialect, locks)
        self.take = lock.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": lock.excluded.holder, "until": lock.excluded.until},
            where=or_(locks.c.until < bindparam("now"), locks.c.holder == lock.excluded.holder),
        ).returning(locks.c.holder)
        self.drop = delete(locks).where(
            locks.c.name == bindparam("name"), locks.c.holder == bindparam("holder")
        )


class Leases(Database):
    def _prepare(self) -> None:
        super()._prepare()
        self._lease_sql = _LeaseStatements(self.dialect)

    async def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take the named lease if it is free or expired; the holder it already belongs
        to extends it (that is how long jobs keep theirs)."""

        return await self.run_write(self._take_lock, name, holder, ttl)

    def _take_lock(self, conn: Connection, name: str, holder: str, ttl: float) -> bool:
        now = self.clock.now()
        taken = conn.execute(
            self._lease_sql.take, {"name": name, "holder": holder, "until": now + ttl, "now": now}
        ).scalar()
        return bool(taken == holder)

    async def release_lock(self, name: str, holder: str) -> None:
        await self.run_write(self._release, name, holder)

    def _release(self, conn: Connection, name: str, holder: str) -> None:
        conn.execute(self._lease_sql.drop, {"name": name, "holder": holder})
