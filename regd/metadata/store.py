"""The metadata store: repositories, blobs, manifests, tags and uploads as rows.

One implementation on SQLAlchemy Core serves SQLite (the embedded default, in WAL mode) and
PostgreSQL (for many replicas). Every public method is async and runs its SQL in a worker
thread, so the event loop never waits on the database.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from regd.errors import RegdError
from regd.metadata import schema as t
from regd.metadata.batching import Retry, WriteBatcher

P = ParamSpec("P")
R = TypeVar("R")


class MetadataError(RegdError):
    """The database failed or its content is not what regd expects."""


class MissingReferences(MetadataError):
    """A manifest names blobs or manifests the repository does not have."""

    def __init__(self, blobs: Sequence[str], manifests: Sequence[str]) -> None:
        super().__init__(f"missing blobs {list(blobs)} and manifests {list(manifests)}")
        self.blobs = list(blobs)
        self.manifests = list(manifests)


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str]
    created_at: float
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewManifest:
    digest: str
    media_type: str
    size: int
    payload: bytes
    artifact_type: str | None
    subject: str | None
    annotations: dict[str, str]
    blobs: Sequence[str] = ()
    children: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class UploadInfo:
    id: str
    repository: str
    size: int
    started_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class TagInfo:
    name: str
    digest: str
    media_type: str
    size: int
    updated_at: float


@dataclass(slots=True)
class Page:
    items: list[str] = field(default_factory=list)
    more: bool = False


# The columns an UploadInfo is built from, in its field order.
UPLOAD_COLUMNS = (
    t.uploads.c.id,
    t.uploads.c.repository,
    t.uploads.c.size,
    t.uploads.c.started_at,
    t.uploads.c.updated_at,
)


def normalize_url(url: str) -> str:
    """Accept the URLs operators write and pick the drivers regd ships with."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") or url.startswith("postgresql+"):
        return url
    raise MetadataError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _sqlite_engine(url: str, pool_size: int) -> Engine:
    engine = create_engine(
        url,
        # pysqlite's own transaction handling is turned off so BEGIN is ours to issue.
        connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
        pool_size=pool_size,
        max_overflow=pool_size,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives power loss, as a 201 promises.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("regd_single_read"):
            # One statement is atomic by itself; a BEGIN would cost as much as the query.
            return
        # A deferred transaction that later writes can fail at once with SQLITE_BUSY
        # without waiting; writers take the write lock up front instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("regd_write") else "BEGIN")

    return engine


class MetadataStore:
    def __init__(self, url: str, *, max_threads: int = 8) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(self.url, max_threads)
        else:
            self.engine = create_engine(
                self.url, pool_size=max_threads, max_overflow=max_threads, pool_pre_ping=True
            )
        self._limiter = trio.CapacityLimiter(max_threads)
        # SQLite writes go through one thread with group commit; PostgreSQL takes
        # concurrent writers itself.
        self._batcher = None
        if self.dialect == "sqlite":
            file_db = parsed.database not in (None, "", ":memory:")
            lock = Path(f"{parsed.database}.writelock") if file_db else None
            self._batcher = WriteBatcher(self.engine, _as_metadata_error, _retryable, lock)

    # -- plumbing ------------------------------------------------------------------------
    # run_read/run_write run a function on a pooled connection inside one transaction, in
    # a worker thread; they are for this package's modules, not for callers above it.

    def insert(self, table: Any) -> sqlite_dialect.Insert | pg_dialect.Insert:
        if self.dialect == "sqlite":
            return sqlite_dialect.insert(table)
        return pg_dialect.insert(table)

    async def run_read(
        self,
        fn: Callable[Concatenate[Connection, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run a read in one transaction, so its statements see one snapshot."""
        return await self._read(fn, False, *args, **kwargs)

    async def run_query(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run a read of a single statement, which needs no transaction (hot paths)."""
        return await self._read(fn, True, *args, **kwargs)

    async def _read(
        self,
        fn: Callable[Concatenate[Connection, P], R],
        single: bool,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        def run() -> R:
            try:
                with self.engine.connect() as conn:
                    if single:
                        conn.execution_options(regd_single_read=True)
                    with conn.begin():
                        return fn(conn, *args, **kwargs)
            except SQLAlchemyError as exc:
                raise MetadataError(f"database error: {exc}") from exc

        return await trio.to_thread.run_sync(run, limiter=self._limiter)

    async def run_write(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        if self._batcher is not None:
            result: R = await self._batcher.run(lambda conn: fn(conn, *args, **kwargs))
            return result

        def run() -> R:
            for attempt in range(1, 6):
                try:
                    with self.engine.connect() as conn:
                        conn.execution_options(regd_write=True)
                        with conn.begin():
                            return fn(conn, *args, **kwargs)
                except Retry:
                    time.sleep(0.005 * attempt)
                    continue
                except MetadataError:
                    raise
                except IntegrityError as exc:
                    raise MetadataError(f"database constraint failed: {exc}") from exc
                except DBAPIError as exc:
                    # Serialization failures and deadlocks are the database asking us to
                    # try again; anything else is a real error.
                    if _retryable(exc) and attempt < 5:
                        time.sleep(0.01 * (attempt + 1))
                        continue
                    raise MetadataError(f"database error: {exc}") from exc
                except SQLAlchemyError as exc:
                    raise MetadataError(f"database error: {exc}") from exc
            raise MetadataError("database stayed busy; gave up after 5 attempts")

        # A write that has begun must finish or roll back by itself; cancelling the
        # waiting task must not leave the caller unsure whether it happened.
        with trio.CancelScope(shield=True):
            outcome = await trio.to_thread.run_sync(run, limiter=self._limiter)
        return outcome

    def create_schema(self) -> None:
        """Create missing tables (idempotent); run once before serving."""
        with self.engine.connect() as conn:
            conn.execution_options(regd_write=True)
            with conn.begin():
                if self.dialect == "postgresql":
                    # Several replicas may start at once.
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7220411)")
                t.metadata.create_all(conn, checkfirst=True)
                version = conn.execute(select(func.max(t.schema_info.c.version))).scalar()
                if version is None:
                    conn.execute(t.schema_info.insert().values(version=t.SCHEMA_VERSION))
                elif version > t.SCHEMA_VERSION:
                    raise MetadataError(
                        f"the database has schema version {version}, newer than this regd "
                        f"understands ({t.SCHEMA_VERSION}); upgrade regd"
                    )

    async def aclose(self) -> None:
        if self._batcher is not None:
            await trio.to_thread.run_sync(self._batcher.close)
        await trio.to_thread.run_sync(self.engine.dispose)

    # -- repositories --------------------------------------------------------------------

    def _repo_id(self, conn: Connection, name: str) -> int | None:
        return conn.execute(
            select(t.repositories.c.id).where(t.repositories.c.name == name)
        ).scalar()

    def _ensure_repo(self, conn: Connection, name: str) -> int:
        repo_id = self._repo_id(conn, name)
        if repo_id is not None:
            return repo_id
        conn.execute(
            self.insert(t.repositories)
            .values(name=name, created_at=time.time())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        repo_id = self._repo_id(conn, name)
        assert repo_id is not None
        return repo_id

    async def repository_exists(self, name: str) -> bool:
        return await self.run_read(lambda c: self._repo_id(c, name) is not None)

    async def list_repositories(self, last: str | None, limit: int | None) -> Page:
        def q(conn: Connection) -> Page:
            stmt = select(t.repositories.c.name).order_by(t.repositories.c.name)
            if last is not None:
                stmt = stmt.where(t.repositories.c.name > last)
            return _page(conn, stmt, limit)

        return await self.run_read(q)

    # -- blobs ---------------------------------------------------------------------------

    async def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob that `repository` may serve, or None."""

        def q(conn: Connection) -> int | None:
            return conn.execute(
                select(t.blobs.c.size)
                .select_from(
                    t.repository_blobs.join(
                        t.repositories, t.repositories.c.id == t.repository_blobs.c.repository_id
                    ).join(t.blobs, t.blobs.c.digest == t.repository_blobs.c.digest)
                )
                .where(t.repositories.c.name == repository, t.repository_blobs.c.digest == digest)
            ).scalar()

        return await self.run_query(q)

    async def global_blob_size(self, digest: str) -> int | None:
        def q(conn: Connection) -> int | None:
            return conn.execute(select(t.blobs.c.size).where(t.blobs.c.digest == digest)).scalar()

        return await self.run_query(q)

    async def link_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        *,
        upload_id: str | None = None,
        release_lock: str | None = None,
    ) -> None:
        """Record that `digest` is stored and that `repository` may serve it.

        Also ends the upload session `upload_id` and releases the lease `release_lock`
        (held by the caller on `blob:<digest>`) in the same transaction.
        """

        def w(conn: Connection) -> None:
            now = time.time()
            repo_id = self._ensure_repo(conn, repository)
            conn.execute(
                self.insert(t.blobs)
                .values(digest=digest, size=size, created_at=now, linked_at=now)
                .on_conflict_do_update(index_elements=["digest"], set_={"linked_at": now})
            )
            self._link(conn, repo_id, digest, now)
            if upload_id is not None:
                conn.execute(delete(t.uploads).where(t.uploads.c.id == upload_id))
            if release_lock is not None:
                self._release(conn, f"blob:{digest}", release_lock)

        await self.run_write(w)

    def _link(self, conn: Connection, repo_id: int, digest: str, now: float) -> None:
        conn.execute(
            self.insert(t.repository_blobs)
            .values(repository_id=repo_id, digest=digest, created_at=now)
            .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
        )

    async def mount_blob(self, repository: str, digest: str, source: str | None) -> int | None:
        """Link a blob the registry already stores into `repository`; its size, or None.

        With `source`, only a blob linked in that repository qualifies. The blob's row is
        locked for the transaction so a concurrent sweep either sees the new link or has
        already removed the blob (and the mount then reports nothing to mount).
        """

        def w(conn: Connection) -> int | None:
            stmt = select(t.blobs.c.size).where(t.blobs.c.digest == digest)
            if source is not None:
                stmt = stmt.select_from(
                    t.blobs.join(
                        t.repository_blobs, t.repository_blobs.c.digest == t.blobs.c.digest
                    ).join(
                        t.repositories, t.repositories.c.id == t.repository_blobs.c.repository_id
                    )
                ).where(t.repositories.c.name == source)
            size = conn.execute(self.share(stmt, t.blobs)).scalar()
            if size is None:
                return None
            now = time.time()
            conn.execute(update(t.blobs).where(t.blobs.c.digest == digest).values(linked_at=now))
            self._link(conn, self._ensure_repo(conn, repository), digest, now)
            return int(size)

        return await self.run_write(w)

    def share(self, stmt: Any, table: Any) -> Any:
        """Lock the rows of `table` a statement reads until commit (PostgreSQL only).

        SQLite needs no row locks: its writers already run one at a time."""
        if self.dialect == "postgresql":
            return stmt.with_for_update(read=True, of=table)
        return stmt

    def exclusive(self, stmt: Any, table: Any) -> Any:
        if self.dialect == "postgresql":
            return stmt.with_for_update(of=table)
        return stmt

    # -- leases --------------------------------------------------------------------------

    async def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take the named lease if it is free or expired."""

        def w(conn: Connection) -> bool:
            now = time.time()
            ins = self.insert(t.locks).values(name=name, holder=holder, until=now + ttl)
            # RETURNING rather than rowcount: drivers disagree on an upsert's rowcount.
            taken = conn.execute(
                ins.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"holder": holder, "until": now + ttl},
                    where=t.locks.c.until < now,
                ).returning(t.locks.c.holder)
            ).scalar()
            return taken == holder

        return await self.run_write(w)

    async def release_lock(self, name: str, holder: str) -> None:
        await self.run_write(lambda conn: self._release(conn, name, holder))

    def _release(self, conn: Connection, name: str, holder: str) -> None:
        conn.execute(delete(t.locks).where(t.locks.c.name == name, t.locks.c.holder == holder))

    async def unlink_blob(self, repository: str, digest: str) -> bool:
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
            return result.rowcount > 0

        return await self.run_write(w)

    # -- uploads -------------------------------------------------------------------------

    async def create_upload(self, upload_id: str, repository: str) -> None:
        def w(conn: Connection) -> None:
            now = time.time()
            conn.execute(
                t.uploads.insert().values(
                    id=upload_id, repository=repository, size=0, started_at=now, updated_at=now
                )
            )

        await self.run_write(w)

    async def get_upload(self, upload_id: str) -> UploadInfo | None:
        def q(conn: Connection) -> UploadInfo | None:
            row = conn.execute(select(*UPLOAD_COLUMNS).where(t.uploads.c.id == upload_id)).first()
            return UploadInfo(*row) if row else None

        return await self.run_query(q)

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

        def w(conn: Connection) -> UploadInfo | None:
            now = time.time()
            cond = [
                t.uploads.c.id == upload_id,
                (t.uploads.c.lease.is_(None)) | (t.uploads.c.lease_until < now),
            ]
            if expected_size is not None:
                cond.append(t.uploads.c.size == expected_size)
            if repository is not None:
                cond.append(t.uploads.c.repository == repository)
            result = conn.execute(
                update(t.uploads).where(and_(*cond)).values(lease=lease, lease_until=now + ttl)
            )
            if result.rowcount == 0:
                return None
            row = conn.execute(select(*UPLOAD_COLUMNS).where(t.uploads.c.id == upload_id)).one()
            return UploadInfo(*row)

        return await self.run_write(w)

    async def renew_upload(self, upload_id: str, lease: str, ttl: float) -> bool:
        """Extend a held lease; False when it was lost (expired and taken over)."""

        def w(conn: Connection) -> bool:
            result = conn.execute(
                update(t.uploads)
                .where(t.uploads.c.id == upload_id, t.uploads.c.lease == lease)
                .values(lease_until=time.time() + ttl)
            )
            return result.rowcount > 0

        return await self.run_write(w)

    async def release_upload(self, upload_id: str, lease: str, size: int) -> bool:
        def w(conn: Connection) -> bool:
            result = conn.execute(
                update(t.uploads)
                .where(t.uploads.c.id == upload_id, t.uploads.c.lease == lease)
                .values(size=size, updated_at=time.time(), lease=None, lease_until=None)
            )
            return result.rowcount > 0

        return await self.run_write(w)

    async def delete_upload(self, upload_id: str) -> bool:
        def w(conn: Connection) -> bool:
            return conn.execute(delete(t.uploads).where(t.uploads.c.id == upload_id)).rowcount > 0

        return await self.run_write(w)

    # -- manifests -----------------------------------------------------------------------

    _info_columns = (
        t.manifests.c.digest,
        t.manifests.c.media_type,
        t.manifests.c.size,
        t.manifests.c.artifact_type,
        t.manifests.c.annotations,
        t.manifests.c.created_at,
    )

    @staticmethod
    def _info(row: Sequence[Any], payload: bytes | None = None) -> ManifestInfo:
        return ManifestInfo(
            digest=row[0],
            media_type=row[1],
            size=row[2],
            artifact_type=row[3],
            annotations=json.loads(row[4]) if row[4] else {},
            created_at=row[5],
            payload=payload,
        )

    async def get_manifest(
        self,
        repository: str,
        *,
        digest: str | None = None,
        tag: str | None = None,
        with_payload: bool = True,
    ) -> ManifestInfo | None:
        def q(conn: Connection) -> ManifestInfo | None:
            cols = (
                (*self._info_columns, t.manifests.c.payload) if with_payload else self._info_columns
            )
            join = t.manifests.join(
                t.repositories, t.repositories.c.id == t.manifests.c.repository_id
            )
            cond = [t.repositories.c.name == repository]
            if digest is not None:
                cond.append(t.manifests.c.digest == digest)
            else:
                join = join.join(t.tags, t.tags.c.manifest_id == t.manifests.c.id)
                cond.append(t.tags.c.name == tag)
                # By tag, "when" is when the tag was last pushed.
                cols = (*cols, t.tags.c.updated_at)
            row = conn.execute(select(*cols).select_from(join).where(*cond)).first()
            if row is None:
                return None
            info = self._info(row, bytes(row[6]) if with_payload else None)
            if tag is not None:
                info = dataclasses.replace(info, created_at=float(row[-1]))
            return info

        return await self.run_query(q)

    async def put_manifest(self, repository: str, new: NewManifest, tags: Iterable[str]) -> None:
        """Store a manifest and point `tags` at it, all or nothing.

        Raises MissingReferences when the repository lacks a blob or child manifest.
        """
        tag_list = list(tags)

        def w(conn: Connection) -> None:
            now = time.time()
            repo_id = self._ensure_repo(conn, repository)
            missing_blobs: list[str] = []
            if new.blobs:
                stmt = (
                    select(t.repository_blobs.c.digest)
                    .select_from(
                        t.repository_blobs.join(
                            t.blobs, t.blobs.c.digest == t.repository_blobs.c.digest
                        )
                    )
                    .where(
                        t.repository_blobs.c.repository_id == repo_id,
                        t.repository_blobs.c.digest.in_(set(new.blobs)),
                    )
                )
                # Holds the blobs against a concurrent sweep until we commit.
                present = set(conn.execute(self.share(stmt, t.blobs)).scalars())
                missing_blobs = [d for d in dict.fromkeys(new.blobs) if d not in present]
            missing_children: list[str] = []
            if new.children:
                stmt = select(t.manifests.c.digest).where(
                    t.manifests.c.repository_id == repo_id,
                    t.manifests.c.digest.in_(set(new.children)),
                )
                present = set(conn.execute(self.share(stmt, t.manifests)).scalars())
                missing_children = [d for d in dict.fromkeys(new.children) if d not in present]
            if missing_blobs or missing_children:
                raise MissingReferences(missing_blobs, missing_children)

            conn.execute(
                self.insert(t.manifests)
                .values(
                    repository_id=repo_id,
                    digest=new.digest,
                    media_type=new.media_type,
                    artifact_type=new.artifact_type,
                    size=new.size,
                    payload=new.payload,
                    subject=new.subject,
                    annotations=json.dumps(new.annotations) if new.annotations else None,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
            )
            manifest_id = conn.execute(
                self.share(
                    select(t.manifests.c.id).where(
                        t.manifests.c.repository_id == repo_id,
                        t.manifests.c.digest == new.digest,
                    ),
                    t.manifests,
                )
            ).scalar()
            if manifest_id is None:
                # A sweep deleted the existing copy between our insert and this read.
                raise Retry()
            for table, digests in (
                (t.manifest_blobs, new.blobs),
                (t.manifest_children, new.children),
            ):
                unique = list(dict.fromkeys(digests))
                if unique:
                    conn.execute(
                        self.insert(table)
                        .values([{"manifest_id": manifest_id, "digest": d} for d in unique])
                        .on_conflict_do_nothing(index_elements=["manifest_id", "digest"])
                    )
            for tag in tag_list:
                ins = self.insert(t.tags).values(
                    repository_id=repo_id, name=tag, manifest_id=manifest_id, updated_at=now
                )
                conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=["repository_id", "name"],
                        set_={"manifest_id": manifest_id, "updated_at": now},
                    )
                )

        await self.run_write(w)

    async def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest and every tag on it."""

        def w(conn: Connection) -> bool:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return False
            manifest_id = conn.execute(
                select(t.manifests.c.id).where(
                    t.manifests.c.repository_id == repo_id, t.manifests.c.digest == digest
                )
            ).scalar()
            if manifest_id is None:
                return False
            conn.execute(delete(t.tags).where(t.tags.c.manifest_id == manifest_id))
            conn.execute(
                delete(t.manifest_blobs).where(t.manifest_blobs.c.manifest_id == manifest_id)
            )
            conn.execute(
                delete(t.manifest_children).where(t.manifest_children.c.manifest_id == manifest_id)
            )
            conn.execute(delete(t.manifests).where(t.manifests.c.id == manifest_id))
            return True

        return await self.run_write(w)

    async def delete_repository(self, repository: str) -> tuple[int, int] | None:
        """Remove a repository's tags, manifests and blob links; (manifests, tags) removed.

        Blob bytes stay until the next collection finds them unreferenced."""

        def w(conn: Connection) -> tuple[int, int] | None:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return None
            manifest_ids = select(t.manifests.c.id).where(t.manifests.c.repository_id == repo_id)
            tags = conn.execute(delete(t.tags).where(t.tags.c.repository_id == repo_id)).rowcount
            conn.execute(
                delete(t.manifest_blobs).where(t.manifest_blobs.c.manifest_id.in_(manifest_ids))
            )
            conn.execute(
                delete(t.manifest_children).where(
                    t.manifest_children.c.manifest_id.in_(manifest_ids)
                )
            )
            manifests = conn.execute(
                delete(t.manifests).where(t.manifests.c.repository_id == repo_id)
            ).rowcount
            conn.execute(
                delete(t.repository_blobs).where(t.repository_blobs.c.repository_id == repo_id)
            )
            conn.execute(delete(t.repositories).where(t.repositories.c.id == repo_id))
            return manifests, tags

        return await self.run_write(w)

    # -- tags ----------------------------------------------------------------------------

    async def delete_tags(self, repository: str, tags: Sequence[str]) -> list[str]:
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
            return found

        return await self.run_write(w)

    async def delete_tag(self, repository: str, tag: str) -> bool:
        def w(conn: Connection) -> bool:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return False
            result = conn.execute(
                delete(t.tags).where(t.tags.c.repository_id == repo_id, t.tags.c.name == tag)
            )
            return result.rowcount > 0

        return await self.run_write(w)

    async def list_tags(self, repository: str, last: str | None, limit: int | None) -> Page | None:
        """A page of tag names in lexical order; None when the repository is unknown."""

        def q(conn: Connection) -> Page | None:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return None
            stmt = (
                select(t.tags.c.name)
                .where(t.tags.c.repository_id == repo_id)
                .order_by(t.tags.c.name)
            )
            if last is not None:
                stmt = stmt.where(t.tags.c.name > last)
            return _page(conn, stmt, limit)

        return await self.run_read(q)

    async def tag_details(self, repository: str) -> list[TagInfo] | None:
        def q(conn: Connection) -> list[TagInfo] | None:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return None
            rows = conn.execute(
                select(
                    t.tags.c.name,
                    t.manifests.c.digest,
                    t.manifests.c.media_type,
                    t.manifests.c.size,
                    t.tags.c.updated_at,
                )
                .select_from(t.tags.join(t.manifests, t.manifests.c.id == t.tags.c.manifest_id))
                .where(t.tags.c.repository_id == repo_id)
                .order_by(t.tags.c.name)
            )
            return [TagInfo(*row) for row in rows]

        return await self.run_read(q)

    # -- referrers -----------------------------------------------------------------------

    async def referrers(
        self, repository: str, subject: str, artifact_type: str | None
    ) -> list[ManifestInfo]:
        def q(conn: Connection) -> list[ManifestInfo]:
            cond = [t.repositories.c.name == repository, t.manifests.c.subject == subject]
            if artifact_type is not None:
                cond.append(t.manifests.c.artifact_type == artifact_type)
            rows = conn.execute(
                select(*self._info_columns)
                .select_from(
                    t.manifests.join(
                        t.repositories, t.repositories.c.id == t.manifests.c.repository_id
                    )
                )
                .where(*cond)
                .order_by(t.manifests.c.digest)
            )
            return [self._info(row) for row in rows]

        return await self.run_read(q)


def _page(conn: Connection, stmt: Any, limit: int | None) -> Page:
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    names = list(conn.execute(stmt).scalars())
    if limit is not None and len(names) > limit:
        return Page(names[:limit], more=True)
    return Page(names, more=False)


def _as_metadata_error(exc: BaseException) -> BaseException:
    """What a write's caller sees: MetadataError for any database failure."""
    if isinstance(exc, MetadataError):
        return exc
    if isinstance(exc, IntegrityError):
        return MetadataError(f"database constraint failed: {exc}")
    if isinstance(exc, SQLAlchemyError):
        return MetadataError(f"database error: {exc}")
    if isinstance(exc, RuntimeError):
        return MetadataError(str(exc))
    return exc


def _retryable(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None)
    if code in ("40001", "40P01"):
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text
