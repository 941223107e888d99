"""The metadata store: repositories, blobs, manifests, tags and uploads as rows.

One implementation on SQLAlchemy Core serves SQLite (the embedded default, in WAL mode) and
PostgreSQL (for many replicas). Every public method is async and runs its SQL in a worker
thread, so the event loop never waits on the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from regd.errors import BackendError
from regd.metadata import schema as t
from regd.metadata.batching import Retry, WriteBatcher

P = ParamSpec("P")
R = TypeVar("R")


class MetadataError(BackendError):
    """The database failed or its content is not what regd expects."""

    kind = "database"


class _Busy(Exception):
    """A read on the event loop's thread would have had to wait for the database."""


# How long a read on the event loop's thread may wait for SQLite before it moves to a
# worker thread instead (milliseconds).
INLINE_BUSY_MS = 20


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


# The columns a ManifestInfo is built from, in its field order (payload aside).
MANIFEST_INFO_COLUMNS = (
    t.manifests.c.digest,
    t.manifests.c.media_type,
    t.manifests.c.size,
    t.manifests.c.artifact_type,
    t.manifests.c.annotations,
    t.manifests.c.created_at,
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


def _insert(dialect: str, table: Any) -> sqlite_dialect.Insert | pg_dialect.Insert:
    """An INSERT that knows its dialect's ON CONFLICT."""
    if dialect == "sqlite":
        return sqlite_dialect.insert(table)
    return pg_dialect.insert(table)


def _share(dialect: str, stmt: Any, table: Any) -> Any:
    """Lock the rows of `table` a statement reads until commit (PostgreSQL only).

    SQLite needs no row locks: its writers already run one at a time."""
    if dialect == "postgresql":
        return stmt.with_for_update(read=True, of=table)
    return stmt


class _Statements:
    """The statements of the busy paths (pushes and mounts), built once per store.

    SQLAlchemy caches the SQL it compiles, but building a statement and its cache key on
    every call cost more than SQLite took to run it. These take every value as a bound
    parameter: a column's value under the column's name, the others as commented. Those
    others must never be named like a column: an UPDATE takes such a parameter as one
    more column to set.
    """

    def __init__(self, dialect: str) -> None:
        def insert(table: Any) -> Any:
            return _insert(dialect, table)

        def share(stmt: Any, table: Any) -> Any:
            return _share(dialect, stmt, table)

        repos, blobs, links, uploads, locks = (
            t.repositories,
            t.blobs,
            t.repository_blobs,
            t.uploads,
            t.locks,
        )
        # :name
        self.repo_id = select(repos.c.id).where(repos.c.name == bindparam("name"))
        self.add_repo = (
            insert(repos).on_conflict_do_nothing(index_elements=["name"]).returning(repos.c.id)
        )

        # Uploaded again, a blob's row only has its linked_at moved forward.
        blob = insert(blobs)
        self.add_blob = blob.on_conflict_do_update(
            index_elements=["digest"], set_={"linked_at": blob.excluded.linked_at}
        )
        self.link_blob = insert(links).on_conflict_do_nothing(
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
        self.blob_size = (
            select(blobs.c.size)
            .select_from(
                links.join(repos, repos.c.id == links.c.repository_id).join(
                    blobs, blobs.c.digest == links.c.digest
                )
            )
            .where(repos.c.name == bindparam("repository"), links.c.digest == bindparam("digest"))
        )
        # :repository, and :digest or :tag. Keyed by (by tag, with payload); by tag, the
        # last column is when the tag was pushed.
        manifests = t.manifests
        info = (*MANIFEST_INFO_COLUMNS,)
        in_repo = manifests.join(repos, repos.c.id == manifests.c.repository_id)
        self.manifest: dict[tuple[bool, bool], Any] = {}
        for with_payload in (False, True):
            cols = (*info, manifests.c.payload) if with_payload else info
            self.manifest[False, with_payload] = (
                select(*cols)
                .select_from(in_repo)
                .where(
                    repos.c.name == bindparam("repository"),
                    manifests.c.digest == bindparam("digest"),
                )
            )
            self.manifest[True, with_payload] = (
                select(*cols, t.tags.c.updated_at)
                .select_from(in_repo.join(t.tags, t.tags.c.manifest_id == manifests.c.id))
                .where(repos.c.name == bindparam("repository"), t.tags.c.name == bindparam("tag"))
            )

        # :upload_id
        self.add_upload = uploads.insert()
        self.upload = select(*UPLOAD_COLUMNS).where(uploads.c.id == bindparam("upload_id"))
        self.drop_upload = delete(uploads).where(uploads.c.id == bindparam("upload_id"))
        # :upload_id, :now, :new_lease, :until, and as asked :expected_size, :in_repository.
        self.take_upload = {
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
        # :upload_id, :held, :new_size, :now
        self.release_upload = (
            update(uploads)
            .where(uploads.c.id == bindparam("upload_id"), uploads.c.lease == bindparam("held"))
            .values(
                size=bindparam("new_size"),
                updated_at=bindparam("now"),
                lease=None,
                lease_until=None,
            )
        )

        # Takes the lease if it is free or expired, or extends it for its holder; :now.
        # RETURNING rather than rowcount: drivers disagree on an upsert's rowcount.
        lock = insert(locks)
        self.take_lock = lock.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": lock.excluded.holder, "until": lock.excluded.until},
            where=or_(locks.c.until < bindparam("now"), locks.c.holder == lock.excluded.holder),
        ).returning(locks.c.holder)
        self.drop_lock = delete(locks).where(
            locks.c.name == bindparam("name"), locks.c.holder == bindparam("holder")
        )

        # :repo_id, :digests (a list)
        self.blobs_present = share(
            select(links.c.digest)
            .select_from(links.join(blobs, blobs.c.digest == links.c.digest))
            .where(
                links.c.repository_id == bindparam("repo_id"),
                links.c.digest.in_(bindparam("digests", expanding=True)),
            ),
            blobs,
        )
        self.children_present = share(
            select(t.manifests.c.digest).where(
                t.manifests.c.repository_id == bindparam("repo_id"),
                t.manifests.c.digest.in_(bindparam("digests", expanding=True)),
            ),
            t.manifests,
        )
        # RETURNING gives the id only when the row is new.
        self.add_manifest = (
            insert(t.manifests)
            .on_conflict_do_nothing(index_elements=["repository_id", "digest"])
            .returning(t.manifests.c.id)
        )
        # :repo_id, :digest
        self.manifest_id = share(
            select(t.manifests.c.id).where(
                t.manifests.c.repository_id == bindparam("repo_id"),
                t.manifests.c.digest == bindparam("digest"),
            ),
            t.manifests,
        )
        self.add_references = {
            table: insert(table).on_conflict_do_nothing(index_elements=["manifest_id", "digest"])
            for table in (t.manifest_blobs, t.manifest_children)
        }
        tag = insert(t.tags)
        self.set_tag = tag.on_conflict_do_update(
            index_elements=["repository_id", "name"],
            set_={"manifest_id": tag.excluded.manifest_id, "updated_at": tag.excluded.updated_at},
        )


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
        self._sql = _Statements(self.dialect)
        # SQLite connections for reads on the calling thread (run_query), one per thread
        # that runs an event loop, kept for the store's life.
        self._here: dict[int, Connection] = {}
        # Listing statements compiled for the driver, by shape (see _page).
        self._listings: dict[tuple[str, bool, bool], Any] = {}
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
        return _insert(self.dialect, table)

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
        """Run a read of a single statement, which needs no transaction (hot paths).

        On SQLite it runs right here, on the event loop's thread: an indexed lookup takes
        microseconds, far less than handing it to a worker thread and back. WAL readers
        wait for no writer; in the rare moments they would (recovery, for one), the short
        busy timeout of this connection gives up and the read goes to a thread.
        """
        if self.dialect == "sqlite":
            try:
                return self._read_here(fn, *args, **kwargs)
            except _Busy:
                pass
        return await self._read(fn, True, *args, **kwargs)

    def _read_here(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        here = threading.get_ident()
        conn = self._here.get(here)
        try:
            if conn is None:
                conn = self.engine.connect()
                conn.execution_options(regd_single_read=True)
                with conn.begin():
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={INLINE_BUSY_MS}")
                self._here[here] = conn
            with conn.begin():
                return fn(conn, *args, **kwargs)
        except SQLAlchemyError as exc:
            # Whatever state the connection is in, the next read starts on a fresh one.
            self._drop_here(here)
            if isinstance(exc, DBAPIError) and _retryable(exc):
                raise _Busy() from exc
            raise MetadataError(f"database error: {exc}") from exc

    def _drop_here(self, thread: int) -> None:
        conn = self._here.pop(thread, None)
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()

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
        for thread in list(self._here):
            self._drop_here(thread)
        if self._batcher is not None:
            await trio.to_thread.run_sync(self._batcher.close)
        await trio.to_thread.run_sync(self.engine.dispose)

    # -- repositories --------------------------------------------------------------------

    def _repo_id(self, conn: Connection, name: str) -> int | None:
        repo_id: int | None = conn.execute(self._sql.repo_id, {"name": name}).scalar()
        return repo_id

    def _ensure_repo(self, conn: Connection, name: str) -> int:
        repo_id = self._repo_id(conn, name)
        if repo_id is None:
            repo_id = conn.execute(
                self._sql.add_repo, {"name": name, "created_at": time.time()}
            ).scalar()
        if repo_id is None:
            # Created by a concurrent transaction since we looked (PostgreSQL).
            repo_id = self._repo_id(conn, name)
        assert repo_id is not None
        return repo_id

    async def repository_exists(self, name: str) -> bool:
        return await self.run_read(lambda c: self._repo_id(c, name) is not None)

    async def list_repositories(self, last: str | None, limit: int | None) -> Page:
        def q(conn: Connection) -> Page:
            stmt = select(t.repositories.c.name).order_by(t.repositories.c.name)
            if last is not None:
                stmt = stmt.where(t.repositories.c.name > bindparam("last"))
            return self._page(conn, ("catalog", last is not None), stmt, {"last": last}, limit)

        return await self.run_read(q)

    def _page(
        self,
        conn: Connection,
        key: tuple[str, bool],
        stmt: Any,
        params: dict[str, Any],
        limit: int | None,
    ) -> Page:
        """One page of a listing: the first column of `stmt`, at most `limit` rows.

        Listings can be long (a whole tag list of thousands), and SQLAlchemy's result
        rows cost twice what the query does; so the statement is compiled once per
        shape (`key`) and its rows read from the driver's cursor directly.
        """
        if limit is not None:
            stmt = stmt.limit(bindparam("limit"))
            params = {**params, "limit": limit + 1}
        shape = (*key, limit is not None)
        compiled = self._listings.get(shape)
        if compiled is None:
            compiled = self._listings[shape] = stmt.compile(dialect=self.engine.dialect)
        # With the statement's own parameters too (a dialect may add some, as an OFFSET).
        values: Any = compiled.construct_params(params)
        if compiled.positiontup is not None:
            values = [values[name] for name in compiled.positiontup]
        driver = conn.connection.dbapi_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            cursor.execute(compiled.string, values)
            names = [row[0] for row in cursor.fetchall()]
        except conn.dialect.loaded_dbapi.Error as exc:
            raise MetadataError(f"database error: {exc}") from exc
        finally:
            cursor.close()
        if limit is not None and len(names) > limit:
            return Page(names[:limit], more=True)
        return Page(names, more=False)

    # -- blobs ---------------------------------------------------------------------------

    async def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of a blob that `repository` may serve, or None."""

        def q(conn: Connection) -> int | None:
            size: int | None = conn.execute(
                self._sql.blob_size, {"repository": repository, "digest": digest}
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
    ) -> None:
        """Record that `digest` is stored and that `repository` may serve it.

        Also ends the upload session `upload_id` and releases the lease `release_lock`
        (held by the caller on `blob:<digest>`) in the same transaction.
        """

        def w(conn: Connection) -> None:
            now = time.time()
            repo_id = self._ensure_repo(conn, repository)
            conn.execute(
                self._sql.add_blob,
                {"digest": digest, "size": size, "created_at": now, "linked_at": now},
            )
            self._link(conn, repo_id, digest, now)
            if upload_id is not None:
                conn.execute(self._sql.drop_upload, {"upload_id": upload_id})
            if release_lock is not None:
                self._release(conn, f"blob:{digest}", release_lock)

        await self.run_write(w)

    def _link(self, conn: Connection, repo_id: int, digest: str, now: float) -> None:
        conn.execute(
            self._sql.link_blob, {"repository_id": repo_id, "digest": digest, "created_at": now}
        )

    async def mount_blob(self, repository: str, digest: str, source: str | None) -> int | None:
        """Link a blob the registry already stores into `repository`; its size, or None.

        With `source`, only a blob linked in that repository qualifies. The blob's row is
        locked for the transaction (by the update of its linked_at) so a concurrent sweep
        either sees the new link or has already removed the blob (and the mount then
        reports nothing to mount).
        """

        def w(conn: Connection) -> int | None:
            now = time.time()
            if source is None:
                found = conn.execute(self._sql.mount_any, {"blob": digest, "now": now})
            else:
                found = conn.execute(
                    self._sql.mount_from, {"blob": digest, "now": now, "source": source}
                )
            size = found.scalar()
            if size is None:
                return None
            self._link(conn, self._ensure_repo(conn, repository), digest, now)
            return int(size)

        return await self.run_write(w)

    def share(self, stmt: Any, table: Any) -> Any:
        return _share(self.dialect, stmt, table)

    def exclusive(self, stmt: Any, table: Any) -> Any:
        if self.dialect == "postgresql":
            return stmt.with_for_update(of=table)
        return stmt

    # -- leases --------------------------------------------------------------------------

    async def acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take the named lease if it is free or expired; the holder it already belongs
        to extends it (that is how long jobs keep theirs)."""

        return await self.run_write(self._take_lock, name, holder, ttl)

    def _take_lock(self, conn: Connection, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        taken = conn.execute(
            self._sql.take_lock, {"name": name, "holder": holder, "until": now + ttl, "now": now}
        ).scalar()
        return bool(taken == holder)

    async def release_lock(self, name: str, holder: str) -> None:
        await self.run_write(self._release, name, holder)

    def _release(self, conn: Connection, name: str, holder: str) -> None:
        conn.execute(self._sql.drop_lock, {"name": name, "holder": holder})

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
                self._sql.add_upload,
                {
                    "id": upload_id,
                    "repository": repository,
                    "size": 0,
                    "started_at": now,
                    "updated_at": now,
                },
            )

        await self.run_write(w)

    async def get_upload(self, upload_id: str) -> UploadInfo | None:
        return await self.run_query(self._upload, upload_id)

    def _upload(self, conn: Connection, upload_id: str) -> UploadInfo | None:
        row = conn.execute(self._sql.upload, {"upload_id": upload_id}).first()
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
        now = time.time()
        stmt = self._sql.take_upload[expected_size is not None, repository is not None]
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
            result = conn.execute(
                update(t.uploads)
                .where(t.uploads.c.id == upload_id, t.uploads.c.lease == lease)
                .values(lease_until=time.time() + ttl)
            )
            return result.rowcount > 0

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
            params = {"upload_id": upload_id, "held": lease, "new_size": size, "now": time.time()}
            released = conn.execute(self._sql.release_upload, params).rowcount > 0
            if release_lock is not None:
                self._release(conn, *release_lock)
            return released

        return await self.run_write(w)

    async def delete_upload(self, upload_id: str) -> bool:
        def w(conn: Connection) -> bool:
            return conn.execute(self._sql.drop_upload, {"upload_id": upload_id}).rowcount > 0

        return await self.run_write(w)

    # -- manifests -----------------------------------------------------------------------

    _info_columns = MANIFEST_INFO_COLUMNS

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
        by_tag = digest is None
        params = (
            {"repository": repository, "tag": tag}
            if by_tag
            else {
                "repository": repository,
                "digest": digest,
            }
        )

        def q(conn: Connection) -> ManifestInfo | None:
            row = conn.execute(self._sql.manifest[by_tag, with_payload], params).first()
            if row is None:
                return None
            info = self._info(row, bytes(row[6]) if with_payload else None)
            if by_tag:
                # By tag, "when" is when the tag was last pushed.
                info = dataclasses.replace(info, created_at=float(row[-1]))
            return info

        return await self.run_query(q)

    async def put_manifest(self, repository: str, new: NewManifest, tags: Iterable[str]) -> None:
        """Store a manifest and point `tags` at it, all or nothing.

        Raises MissingReferences when the repository lacks a blob or child manifest.
        """
        tag_list = list(dict.fromkeys(tags))
        blobs = list(dict.fromkeys(new.blobs))
        children = list(dict.fromkeys(new.children))

        def w(conn: Connection) -> None:
            now = time.time()
            repo_id = self._ensure_repo(conn, repository)
            missing_blobs = _missing(conn, self._sql.blobs_present, repo_id, blobs)
            missing_children = _missing(conn, self._sql.children_present, repo_id, children)
            if missing_blobs or missing_children:
                raise MissingReferences(missing_blobs, missing_children)

            manifest_id = conn.execute(
                self._sql.add_manifest,
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
                    self._sql.manifest_id, {"repo_id": repo_id, "digest": new.digest}
                ).scalar()
            if manifest_id is None:
                # A sweep deleted the existing copy between our insert and this read.
                raise Retry()
            for table, digests in ((t.manifest_blobs, blobs), (t.manifest_children, children)):
                if digests:
                    conn.execute(
                        self._sql.add_references[table],
                        [{"manifest_id": manifest_id, "digest": d} for d in digests],
                    )
            if tag_list:
                conn.execute(
                    self._sql.set_tag,
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
                .where(t.tags.c.repository_id == bindparam("repo_id"))
                .order_by(t.tags.c.name)
            )
            if last is not None:
                stmt = stmt.where(t.tags.c.name > bindparam("last"))
            params = {"repo_id": repo_id, "last": last}
            return self._page(conn, ("tags", last is not None), stmt, params, limit)

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


def _missing(conn: Connection, stmt: Any, repo_id: int, digests: list[str]) -> list[str]:
    """Those of `digests` that the repository lacks, by `stmt`, which locks the rows of
    the others until commit (PostgreSQL): they are held against a concurrent sweep."""
    if not digests:
        return []
    present = set(conn.execute(stmt, {"repo_id": repo_id, "digests": digests}).scalars())
    return [d for d in digests if d not in present]


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
