"""Blobs: which are stored, and which repositories may serve them (links and mounts)."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, delete, exists, select, update

from regd.metadata import schema as t
from regd.metadata.engine import insert_for
from regd.metadata.outbox import BLOB_MEDIA_TYPE, DELETE, MOUNT, PUSH, Origin, Outbox, Target
from regd.metadata.records import Page
from regd.metadata.rules import blob_lease
from regd.metadata.uploads import Uploads


class _BlobStatements:
    def __init__(self, dialect: str) -> None:
        repos, blobs, links = t.repositories, t.blobs, t.repository_blobs
        # Uploaded again, a blob's row only has its linked_at moved forward.
        blob = insert_for(dialect, blobs)
        self.add = blob.on_conflict_do_update(
            index_elements=["digest"], set_={"linked_at": blob.excluded.linked_at}
        )
        self.link = insert_for(dialect, links).on_conflict_do_nothing(
            index_elements=["repository_id", "digest"]
        )
        # :blob, :now, and for mount_from :source. The update locks the blob's row until
        # commit (PostgreSQL), which is what holds it against a concurrent sweep.
        self.mount_any = (
            update(blobs)
            .where(blobs.c.digest == bindparam("blob"))
            .values(linked_at=bindparam("now"))
            .returning(blobs.c.size)
        )
        self.mount_from = self.mount_any.where(
            exists().where(
                links.c.digest == blobs.c.digest,
                links.c.repository_id == repos.c.id,
                repos.c.name == bindparam("source"),
            )
        )
        # :repository, :digest
        self.size = (
            select(blobs.c.size)
            .select_from(
                links.join(repos, repos.c.id == links.c.repository_id).join(
                    blobs, blobs.c.digest == links.c.digest
                )
            )
            .where(repos.c.name == bindparam("repository"), links.c.digest == bindparam("digest"))
        )


class Blobs(Uploads, Outbox):
    def _prepare(self) -> None:
        super()._prepare()
        self._blob_sql = _BlobStatements(self.dialect)

    async def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob that `repository` may serve, or None."""

        def q(conn: Connection) -> int | None:
            size: int | None = conn.execute(
                self._blob_sql.size, {"repository": repository, "digest": digest}
            ).scalar()
            return size

        return await self.run_query(q)

    async def global_blob_size(self, digest: str) -> int | None:
        def q(conn: Connection) -> int | None:
            return conn.execute(select(t.blobs.c.size).where(t.blobs.c.digest == digest)).scalar()

        return await self.run_query(q)

    async def blob_repositories(self, digest: str, after: str | None, limit: int) -> Page:
        """Names of repositories the blob is linked in, by name, after `after`: how an
        automatic mount finds a source the caller may read."""

        def q(conn: Connection) -> Page:
            repos, links = t.repositories, t.repository_blobs
            stmt = (
                select(repos.c.name)
                .select_from(links.join(repos, repos.c.id == links.c.repository_id))
                .where(links.c.digest == digest)
                .order_by(repos.c.name)
                .limit(limit + 1)
            )
            if after is not None:
                stmt = stmt.where(repos.c.name > after)
            names = [row[0] for row in conn.execute(stmt)]
            return Page(names[:limit], more=len(names) > limit)

        return await self.run_query(q)

    async def link_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        *,
        upload_id: str | None = None,
        release_lock: str | None = None,
        origin: Origin | None = None,
    ) -> None:
        """Record that `digest` is stored and that `repository` may serve it.

        Also ends the upload session `upload_id`, releases the blob's lease, held by
        `release_lock`, and with `origin` writes the push event, in the same transaction.
        """
        target = Target(repository, digest, BLOB_MEDIA_TYPE, size, kind="blobs")
        events = self._event_rows(origin, PUSH, [target])

        def w(conn: Connection) -> None:
            now = self.clock.now()
            repo_id = self._ensure_repo(conn, repository)
            conn.execute(
                self._blob_sql.add,
                {"digest": digest, "size": size, "created_at": now, "linked_at": now},
            )
            self._link(conn, repo_id, digest, now)
            if upload_id is not None:
                self._end_upload(conn, upload_id)
            if release_lock is not None:
                self._release(conn, blob_lease(digest), release_lock)
            self._write_events(conn, events)

        await self.run_write(w)

    def _link(self, conn: Connection, repo_id: int, digest: str, now: float) -> None:
        conn.execute(
            self._blob_sql.link, {"repository_id": repo_id, "digest": digest, "created_at": now}
        )

    async def mount_blob(
        self, repository: str, digest: str, source: str | None, *, origin: Origin | None = None
    ) -> int | None:
        """Link a blob the registry already stores into `repository`; its size, or None.

        With `source`, only a blob linked in that repository qualifies. The blob's row is
        locked for the transaction (by the update of its linked_at) so a concurrent sweep
        either sees the new link or has already removed the blob (and the mount then
        reports nothing to mount).
        """

        def w(conn: Connection) -> int | None:
            now = self.clock.now()
            if source is None:
                found = conn.execute(self._blob_sql.mount_any, {"blob": digest, "now": now})
            else:
                found = conn.execute(
                    self._blob_sql.mount_from, {"blob": digest, "now": now, "source": source}
                )
            size = found.scalar()
            if size is None:
                return None
            self._link(conn, self._ensure_repo(conn, repository), digest, now)
            if origin is not None:
                target = Target(
                    repository,
                    digest,
                    BLOB_MEDIA_TYPE,
                    int(size),
                    kind="blobs",
                    from_repository=source,
                )
                self._record_events(conn, origin, MOUNT, [target])
            return int(size)

        return await self.run_write(w)

    async def unlink_blob(
        self, repository: str, digest: str, *, origin: Origin | None = None
    ) -> bool:
        def w(conn: Connection) -> bool:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return False
            result = conn.execute(
                delete(t.repository_blobs).where(
                    t.repository_blobs.c.repository_id == repo_id,
                    t.repository_blobs.c.digest == digest,
                )
            )
            if result.rowcount > 0:
                self._record_events(conn, origin, DELETE, [Target(repository, digest)])
            return result.rowcount > 0

        return await self.run_write(w)
