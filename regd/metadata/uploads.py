"""Upload sessions as rows, so any replica can continue one; each with a write lease held
by the request currently appending, so two writers never interleave."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, delete, func, or_, select, update

from regd.metadata import schema as t
from regd.metadata.leases import Leases
from regd.metadata.records import UPLOAD_COLUMNS, UploadInfo


class _UploadStatements:
    def __init__(self) -> None:
        uploads = t.uploads
        # :upload_id
        self.add = uploads.insert()
        self.get = select(*UPLOAD_COLUMNS).where(uploads.c.id == bindparam("upload_id"))
        self.drop = delete(uploads).where(uploads.c.id == bindparam("upload_id"))
        # :upload_id, :now, :new_lease, :until, and as asked :expected_size, :in_repository.
        self.take = {
            (by_size, by_repo): update(uploads)
            .where(
                uploads.c.id == bindparam("upload_id"),
                or_(uploads.c.lease.is_(None), uploads.c.lease_until < bindparam("now")),
                *([uploads.c.size == bindparam("expected_size")] if by_size else []),
                *([uploads.c.repository == bindparam("in_repository")] if by_repo else []),
            )
            .values(lease=bindparam("new_lease"), lease_until=bindparam("until"))
            for by_size in (False, True)
            for by_repo in (False, True)
        }
        # :upload_id, :held, :until
        self.renew = (
            update(uploads)
            .where(uploads.c.id == bindparam("upload_id"), uploads.c.lease == bindparam("held"))
            .values(lease_until=bindparam("until"))
        )
        # :upload_id, :held, :new_size, :now
        self.release = (
            update(uploads)
            .where(uploads.c.id == bindparam("upload_id"), uploads.c.lease == bindparam("held"))
            .values(
                size=bindparam("new_size"),
                updated_at=bindparam("now"),
                lease=None,
                lease_until=None,
            )
        )


class Uploads(Leases):
    def _prepare(self) -> None:
        super()._prepare()
        self._upload_sql = _UploadStatements()

    def _add_upload(self, conn: Connection, upload_id: str, repository: str) -> None:
        now = self.clock.now()
        params = {"id": upload_id, "repository": repository, "size": 0}
        conn.execute(self._upload_sql.add, {**params, "started_at": now, "updated_at": now})

    async def create_upload(self, upload_id: str, repository: str) -> None:
        await self.run_write(lambda conn: self._add_upload(conn, upload_id, repository))

    async def create_upload_within(self, upload_id: str, repository: str, limit: int) -> int:
        """create_upload unless `repository` already has `limit` sessions; returns how many
        it had before (below `limit`: the session was created). Counts at most `limit`
        rows, by the index on the repository.

        Count and insert share a transaction: exact on SQLite, whose writers take turns;
        concurrent creations on PostgreSQL may overshoot the limit by a few."""

        def w(conn: Connection) -> int:
            upto = (
                select(t.uploads.c.id).where(t.uploads.c.repository == repository).limit(limit)
            ).subquery()
            open_now = int(conn.execute(select(func.count()).select_from(upto)).scalar_one())
            if open_now < limit:
                self._add_upload(conn, upload_id, repository)
            return open_now

        return await self.run_write(w)

    async def get_upload(self, upload_id: str) -> UploadInfo | None:
        return await self.run_query(self._upload, upload_id)

    def _upload(self, conn: Connection, upload_id: str) -> UploadInfo | None:
        row = conn.execute(self._upload_sql.get, {"upload_id": upload_id}).first()
        return UploadInfo(*row) if row else None

    async def acquire_upload(
        self,
        upload_id: str,
        lease: str,
        *,
        expected_size: int | None,
        ttl: float,
        repository: str | None = None,
    ) -> UploadInfo | None:
        """Take the upload's write lease; None when it is held, the size moved on, or the
        session is unknown (in `repository`, when given)."""
        return await self.run_write(
            self._take_upload, upload_id, lease, expected_size, ttl, repository
        )

    async def acquire_upload_and_lock(
        self,
        upload_id: str,
        lease: str,
        *,
        expected_size: int | None,
        ttl: float,
        repository: str,
        lock: str,
        holder: str,
        lock_ttl: float,
        if_size_at_most: int,
    ) -> tuple[UploadInfo | None, bool]:
        """acquire_upload, and in the same transaction the named lease `lock` for `holder`
        when the session holds at most `if_size_at_most` bytes; whether that was taken.

        A busy named lease is not waited for: the upload's lease is taken all the same,
        and the caller takes the other one later, the slow way."""

        def w(conn: Connection) -> tuple[UploadInfo | None, bool]:
            info = self._take_upload(conn, upload_id, lease, expected_size, ttl, repository)
            if info is None or info.size > if_size_at_most:
                return info, False
            return info, self._take_lock(conn, lock, holder, lock_ttl)

        return await self.run_write(w)

    def _take_upload(
        self,
        conn: Connection,
        upload_id: str,
        lease: str,
        expected_size: int | None,
        ttl: float,
        repository: str | None,
    ) -> UploadInfo | None:
        now = self.clock.now()
        stmt = self._upload_sql.take[expected_size is not None, repository is not None]
        params = {
            "upload_id": upload_id,
            "now": now,
            "new_lease": lease,
            "until": now + ttl,
            "expected_size": expected_size,
            "in_repository": repository,
        }
        if conn.execute(stmt, params).rowcount == 0:
            return None
        return self._upload(conn, upload_id)

    async def renew_upload(self, upload_id: str, lease: str, ttl: float) -> bool:
        """Extend a held lease; False when it was lost (expired and taken over)."""

        def w(conn: Connection) -> bool:
            params = {"upload_id": upload_id, "held": lease, "until": self.clock.now() + ttl}
            return conn.execute(self._upload_sql.renew, params).rowcount > 0

        return await self.run_write(w)

    async def release_upload(
        self,
        upload_id: str,
        lease: str,
        size: int,
        *,
        release_lock: tuple[str, str] | None = None,
    ) -> bool:
        """Give back the upload's write lease, the session now holding `size` bytes; False
        when the lease was not held. Also releases the named lease `release_lock` (name,
        holder), in the same transaction."""

        def w(conn: Connection) -> bool:
            params = {
                "upload_id": upload_id,
                "held": lease,
                "new_size": size,
                "now": self.clock.now(),
            }
            released = conn.execute(self._upload_sql.release, params).rowcount > 0
            if release_lock is not None:
                self._release(conn, *release_lock)
            return released

        return await self.run_write(w)

    async def delete_upload(self, upload_id: str) -> bool:
        return await self.run_write(self._end_upload, upload_id)

    def _end_upload(self, conn: Connection, upload_id: str) -> bool:
        return conn.execute(self._upload_sql.drop, {"upload_id": upload_id}).rowcount > 0
