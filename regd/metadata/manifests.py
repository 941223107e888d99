"""Manifests, what they reference, the tags that point at them, and their referrers.

A manifest's dependent rows (its tags, blob and child references) go with it by the
schema's ON DELETE CASCADE; deleting the manifest's row is the one way to delete one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, select

from regd.metadata import schema as t
from regd.metadata.batching import Retry
from regd.metadata.engine import DriverStatement, insert_for, share_for
from regd.metadata.outbox import DELETE, PUSH, Origin, Outbox, Target
from regd.metadata.records import ManifestInfo, MissingReferences, NewManifest

# The columns a ManifestInfo is built from, in its field order (payload aside).
MANIFEST_INFO_COLUMNS = (
    t.manifests.c.digest,
    t.manifests.c.media_type,
    t.manifests.c.size,
    t.manifests.c.artifact_type,
    t.manifests.c.annotations,
    t.manifests.c.created_at,
)


class _ManifestStatements:
    def __init__(self, dialect: str, engine: Engine) -> None:
        def insert(table: Any) -> Any:
            return insert_for(dialect, table)

        def share(stmt: Any, table: Any) -> Any:
            return share_for(dialect, stmt, table)

        repos, manifests, tags = t.repositories, t.manifests, t.tags
        # :repository, and :digest or :tag. Keyed by (by tag, with payload); by tag, the
        # last column is when the tag was pushed.
        in_repo = manifests.join(repos, repos.c.id == manifests.c.repository_id)
        self.get: dict[tuple[bool, bool], Any] = {}
        for with_payload in (False, True):
            cols = (
                (*MANIFEST_INFO_COLUMNS, manifests.c.payload)
                if with_payload
                else MANIFEST_INFO_COLUMNS
            )
            self.get[False, with_payload] = (
                select(*cols)
                .select_from(in_repo)
                .where(
                    repos.c.name == bindparam("repository"),
                    manifests.c.digest == bindparam("digest"),
                )
            )
            # From the tags' side: the repository's id and the tag's name are the tags'
            # key, so the lookup reads one tag row, then its manifest by id. Joined from the
            # manifests' side, a planner may walk every tag of each manifest instead (with
            # 100,000 tags on a few hundred manifests, most of them).
            self.get[True, with_payload] = (
                select(*cols, tags.c.updated_at)
                .select_from(
                    repos.join(tags, tags.c.repository_id == repos.c.id).join(
                        manifests, manifests.c.id == tags.c.manifest_id
                    )
                )
                .where(repos.c.name == bindparam("repository"), tags.c.name == bindparam("tag"))
            )
        # Every manifest GET and HEAD runs one of these: on the driver's cursor, where
        # SQLAlchemy's execution and result objects took more than half of the lookup.
        # Their parameters are strings and their columns come back as the driver gives
        # them (`manifest_info` converts).
        self.lookup = {key: DriverStatement(stmt, engine) for key, stmt in self.get.items()}

        # :repo_id, :digests (a list)
        self.blobs_present = share(
            select(t.repository_blobs.c.digest)
            .select_from(
                t.repository_blobs.join(t.blobs, t.blobs.c.digest == t.repository_blobs.c.digest)
            )
            .where(
                t.repository_blobs.c.repository_id == bindparam("repo_id"),
                t.repository_blobs.c.digest.in_(bindparam("digests", expanding=True)),
            ),
            t.blobs,
        )
        self.children_present = share(
            select(manifests.c.digest).where(
                manifests.c.repository_id == bindparam("repo_id"),
                manifests.c.digest.in_(bindparam("digests", expanding=True)),
            ),
            manifests,
        )
        # RETURNING gives the id only when the row is new.
        self.add = (
            insert(manifests)
            .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
            .returning(manifests.c.id)
        )
        # :repo_id, :digest
        self.id = share(
            select(manifests.c.id).where(
                manifests.c.repository_id == bindparam("repo_id"),
                manifests.c.digest == bindparam("digest"),
            ),
            manifests,
        )
        self.add_references = {
            table: insert(table).on_conflict_do_nothing(index_elements=["manifest_id", "digest"])
            for table in (t.manifest_blobs, t.manifest_children)
        }
        tag = insert(tags)
        self.set_tag = tag.on_conflict_do_update(
            index_elements=["repository_id", "name"],
            set_={"manifest_id": tag.excluded.manifest_id, "updated_at": tag.excluded.updated_at},
        )


def manifest_info(
    row: Sequence[Any], payload: bytes | None = None, created_at: float | None = None
) -> ManifestInfo:
    """A ManifestInfo from a row that starts with MANIFEST_INFO_COLUMNS; `created_at`
    instead of the manifest's own time when given."""
    return ManifestInfo(
        digest=row[0],
        media_type=row[1],
        size=row[2],
        artifact_type=row[3],
        annotations=json.loads(row[4]) if row[4] else {},
        # A float even from a driver's row, which SQLAlchemy's Float would have made it.
        created_at=float(row[5] if created_at is None else created_at),
        payload=payload,
    )


def _missing(conn: Connection, stmt: Any, repo_id: int, digests: list[str]) -> list[str]:
    """Those of `digests` that the repository lacks, by `stmt`, which locks the rows of
    the others until commit (PostgreSQL): they are held against a concurrent sweep."""
    if not digests:
        return []
    present = set(conn.execute(stmt, {"repo_id": repo_id, "digests": digests}).scalars())
    return [d for d in digests if d not in present]


class Manifests(Outbox):
    def _prepare(self) -> None:
        super()._prepare()
        self._manifest_sql = _ManifestStatements(self.dialect, self.engine)

    async def get_manifest(
        self,
        repository: str,
        *,
        digest: str | None = None,
        tag: str | None = None,
        with_payload: bool = True,
    ) -> ManifestInfo | None:
        by_tag = digest is None
        params = (
            {"repository": repository, "tag": tag}
            if by_tag
            else {
                "repository": repository,
                "digest": digest,
            }
        )

        lookup = self._manifest_sql.lookup[by_tag, with_payload]

        def q(driver: Any) -> ManifestInfo | None:
            rows = lookup.rows_on(driver, params)
            if not rows:
                return None
            row = rows[0]
            # By tag, "when" is when the tag was last pushed.
            return manifest_info(
                row, bytes(row[6]) if with_payload else None, row[-1] if by_tag else None
            )

        return await self.run_driver_query(q)

    async def put_manifest(
        self,
        repository: str,
        new: NewManifest,
        tags: Iterable[str],
        *,
        origin: Origin | None = None,
    ) -> None:
        """Store a manifest and point `tags` at it, all or nothing; with `origin`, its push
        events (one per tag) are written with it.

        Raises MissingReferences when the repository lacks a blob or child manifest.
        """
        tag_list = list(dict.fromkeys(tags))
        blobs = list(dict.fromkeys(new.blobs))
        children = list(dict.fromkeys(new.children))
        sql = self._manifest_sql
        pushed: list[str | None] = [*tag_list] if tag_list else [None]
        events = self._event_rows(
            origin,
            PUSH,
            [
                Target(repository, new.digest, new.media_type, new.size, tag, "manifests")
                for tag in pushed
            ],
        )

        def w(conn: Connection) -> None:
            now = self.clock.now()
            repo_id = self._ensure_repo(conn, repository)
            missing_blobs = _missing(conn, sql.blobs_present, repo_id, blobs)
            missing_children = _missing(conn, sql.children_present, repo_id, children)
            if missing_blobs or missing_children:
                raise MissingReferences(missing_blobs, missing_children)

            manifest_id = conn.execute(
                sql.add,
                {
                    "repository_id": repo_id,
                    "digest": new.digest,
                    "media_type": new.media_type,
                    "artifact_type": new.artifact_type,
                    "size": new.size,
                    "payload": new.payload,
                    "subject": new.subject,
                    "annotations": json.dumps(new.annotations) if new.annotations else None,
                    "created_at": now,
                },
            ).scalar()
            if manifest_id is None:
                # Pushed before: use (and lock) the stored copy.
                manifest_id = conn.execute(
                    sql.id, {"repo_id": repo_id, "digest": new.digest}
                ).scalar()
            if manifest_id is None:
                # A sweep deleted the existing copy between our insert and this read.
                raise Retry()
            for table, digests in ((t.manifest_blobs, blobs), (t.manifest_children, children)):
                if digests:
                    conn.execute(
                        sql.add_references[table],
                        [{"manifest_id": manifest_id, "digest": d} for d in digests],
                    )
            if tag_list:
                conn.execute(
                    sql.set_tag,
                    [
                        {
                            "repository_id": repo_id,
                            "name": tag,
                            "manifest_id": manifest_id,
                            "updated_at": now,
                        }
                        for tag in tag_list
                    ],
                )
            self._write_events(conn, events)

        await self.run_write(w)

    async def delete_manifest(
        self, repository: str, digest: str, *, origin: Origin | None = None
    ) -> bool:
        """Delete a manifest and every tag on it."""

        def w(conn: Connection) -> bool:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return False
            result = conn.execute(
                delete(t.manifests).where(
                    t.manifests.c.repository_id == repo_id, t.manifests.c.digest == digest
                )
            )
            if result.rowcount > 0:
                self._record_events(conn, origin, DELETE, [Target(repository, digest)])
            return result.rowcount > 0

        return await self.run_write(w)

    async def delete_repository(
        self, repository: str, *, origin: Origin | None = None
    ) -> tuple[int, int] | None:
        """Remove a repository's tags, manifests and blob links; (manifests, tags) removed.

        Blob bytes stay until the next collection finds them unreferenced."""

        def w(conn: Connection) -> tuple[int, int] | None:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return None
            tags = conn.execute(
                select(func.count()).select_from(t.tags).where(t.tags.c.repository_id == repo_id)
            ).scalar_one()
            manifests = conn.execute(
                delete(t.manifests).where(t.manifests.c.repository_id == repo_id)
            ).rowcount
            # Its blob links go with it (ON DELETE CASCADE).
            conn.execute(delete(t.repositories).where(t.repositories.c.id == repo_id))
            self._record_events(conn, origin, DELETE, [Target(repository)])
            return manifests, int(tags)

        return await self.run_write(w)

    async def delete_tags(
        self, repository: str, tags: Sequence[str], *, origin: Origin | None = None
    ) -> list[str]:
        """Delete several tags in one transaction; the ones that existed."""

        def w(conn: Connection) -> list[str]:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return []
            found = list(
                conn.execute(
                    select(t.tags.c.name).where(
                        t.tags.c.repository_id == repo_id, t.tags.c.name.in_(list(tags))
                    )
                ).scalars()
            )
            if found:
                conn.execute(
                    delete(t.tags).where(
                        t.tags.c.repository_id == repo_id, t.tags.c.name.in_(found)
                    )
                )
                self._record_events(
                    conn, origin, DELETE, [Target(repository, tag=tag) for tag in found]
                )
            return found

        return await self.run_write(w)

    async def delete_tag(self, repository: str, tag: str, *, origin: Origin | None = None) -> bool:
        def w(conn: Connection) -> bool:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return False
            result = conn.execute(
                delete(t.tags).where(t.tags.c.repository_id == repo_id, t.tags.c.name == tag)
            )
            if result.rowcount > 0:
                self._record_events(conn, origin, DELETE, [Target(repository, tag=tag)])
            return result.rowcount > 0

        return await self.run_write(w)

    async def referrers(
        self, repository: str, subject: str, artifact_type: str | None
    ) -> list[ManifestInfo]:
        def q(conn: Connection) -> list[ManifestInfo]:
            cond = [t.repositories.c.name == repository, t.manifests.c.subject == subject]
            if artifact_type is not None:
                cond.append(t.manifests.c.artifact_type == artifact_type)
            rows = conn.execute(
                select(*MANIFEST_INFO_COLUMNS)
                .select_from(
                    t.manifests.join(
                        t.repositories, t.repositories.c.id == t.manifests.c.repository_id
                    )
                )
                .where(*cond)
                .order_by(t.manifests.c.digest)
            )
            return [manifest_info(row) for row in rows]

        return await self.run_read(q)
