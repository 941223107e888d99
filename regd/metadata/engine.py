"""The store's engine: connections, transactions, group commit and inline point reads.

One implementation on SQLAlchemy Core serves SQLite (the embedded default, in WAL mode) and
PostgreSQL (for many replicas). Every public method of the store is async and runs its SQL
in a worker thread, so the event loop never waits on the database; the one exception is a
single-statement read on SQLite, which is cheaper on the loop's thread than a hand-off.

Each concern of the store (leases, uploads, blobs, manifests and tags, listings) is a mixin
of `Database` in a module of its own, holding its own prebuilt statements; `MetadataStore`
puts them together.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import trio
from sqlalchemy import Connection, Engine, bindparam, create_engine, event, func, select
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from regd.clock import SYSTEM_CLOCK, Clock
from regd.metadata import schema as t
from regd.metadata.batching import MAX_ATTEMPTS, WAIT_TIMEOUT, Retry, WriteBatcher, WriterFault
from regd.metadata.dbfile import DatabaseFile, DatabaseFileGone
from regd.metadata.records import MetadataError

P = ParamSpec("P")
R = TypeVar("R")

# How long a read on the event loop's thread may wait for SQLite before it moves to a
# worker thread instead (milliseconds).
INLINE_BUSY_MS = 20


class _Busy(Exception):
    """A read on the event loop's thread would have had to wait for the database."""


class DriverStatement:
    """A statement compiled once and run on the driver's own cursor.

    SQLAlchemy's execution of a small statement costs several times what the database
    takes for it (an event row's INSERT on SQLite: ~75 us against ~9 us), which matters on
    paths that run a statement per event. Only for statements whose parameters go to the
    driver as they are (strings and numbers: no type conversion is applied). Driver
    errors come out as SQLAlchemy's, so callers and the writer treat them as any other.
    """

    def __init__(self, stmt: Any, engine: Engine) -> None:
        compiled = stmt.compile(dialect=engine.dialect)
        self.sql: str = compiled.string
        # Parameter names in order for positional paramstyles (SQLite's `?`); None for
        # named ones (psycopg's `%(name)s`), which take the mapping itself.
        self._names: tuple[str, ...] | None = (
            None if compiled.positiontup is None else tuple(compiled.positiontup)
        )
        # Parameters the dialect adds with a value of its own (SQLite's OFFSET after LIMIT).
        self._fixed = {
            k: v for k, v in compiled.construct_params(_check=False).items() if v is not None
        }
        self._error: type[Exception] = engine.dialect.loaded_dbapi.Error

    def _values(self, params: Mapping[str, Any]) -> Any:
        if self._fixed:
            params = {**self._fixed, **params}
        return params if self._names is None else tuple(params[n] for n in self._names)

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run it once; the rows it answers."""
        return self.rows_on(self._driver(conn), params)

    def rows_on(self, driver: Any, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """`rows` on the driver's own connection (Database.run_driver_query)."""
        values = self._values(params)
        cursor = driver.cursor()
        try:
            cursor.execute(self.sql, values)
            return [tuple(row) for row in cursor.fetchall()]
        except self._error as exc:
            raise DBAPIError.instance(self.sql, values, exc, self._error) from exc
        finally:
            cursor.close()

    def many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """Run it once for each set of parameters."""
        if not params:
            return
        values = [self._values(p) for p in params]
        cursor = self._driver(conn).cursor()
        try:
            cursor.executemany(self.sql, values)
        except self._error as exc:
            raise DBAPIError.instance(self.sql, values, exc, self._error) from exc
        finally:
            cursor.close()

    @staticmethod
    def _driver(conn: Connection) -> Any:
        driver = conn.connection.dbapi_connection
        assert driver is not None
        return driver


def _on_driver(conn: Connection, fn: Callable[[Any], R]) -> R:
    return fn(DriverStatement._driver(conn))


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
        # Off by default in SQLite, and deleting a manifest relies on its cascades.
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


def insert_for(dialect: str, table: Any) -> sqlite_dialect.Insert | pg_dialect.Insert:
    """An INSERT that knows its dialect's ON CONFLICT."""
    if dialect == "sqlite":
        return sqlite_dialect.insert(table)
    return pg_dialect.insert(table)


def share_for(dialect: str, stmt: Any, table: Any) -> Any:
    """Lock the rows of `table` a statement reads until commit (PostgreSQL only).

    SQLite needs no row locks: its writers already run one at a time."""
    if dialect == "postgresql":
        return stmt.with_for_update(read=True, of=table)
    return stmt


def retryable(exc: DBAPIError) -> bool:
    """Whether the database asks for the transaction to be tried again."""
    code = getattr(exc.orig, "sqlstate", None)
    if code in ("40001", "40P01"):
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


class _RepositoryStatements:
    """Prebuilt statements (see `Database._prepare`) for a repository's id, which every
    concern looks up."""

    def __init__(self, dialect: str) -> None:
        repos = t.repositories
        # :name
        self.repo_id = select(repos.c.id).where(repos.c.name == bindparam("name"))
        self.add_repo = (
            insert_for(dialect, repos)
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(repos.c.id)
        )


class Database:
    """Connections and transactions; the base of every part of the store.

    The busy paths (pushes and mounts) run statements built once per store, in each
    mixin's `_prepare`: SQLAlchemy caches the SQL it compiles, but building a statement
    and its cache key on every call cost more than SQLite took to run it. These take
    every value as a bound parameter: a column's value under the column's name, the others
    as commented. Those others must never be named like a column: an UPDATE takes such a
    parameter as one more column to set.
    """

    def __init__(
        self,
        url: str,
        *,
        max_threads: int = 8,
        clock: Clock = SYSTEM_CLOCK,
        write_timeout: float = WAIT_TIMEOUT,
    ) -> None:
        self.url = normalize_url(url)
        self.clock = clock
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
        # The driver's own base exception: raw cursors (listings) raise it unwrapped.
        self._dbapi_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error
        self._limiter = trio.CapacityLimiter(max_threads)
        # SQLite connections for reads on the calling thread (run_query), one per thread
        # that runs an event loop, kept for the store's life.
        self._here: dict[int, Connection] = {}
        # SQLite writes go through one thread with group commit; PostgreSQL takes
        # concurrent writers itself.
        self._batcher: WriteBatcher | None = None
        if self.dialect == "sqlite":
            file_db = parsed.database not in (None, "", ":memory:")
            lock = Path(f"{parsed.database}.writelock") if file_db else None
            database = DatabaseFile(Path(str(parsed.database))) if file_db else None
            self._batcher = WriteBatcher(
                self.engine,
                self._as_metadata_error,
                retryable,
                lock,
                database=database,
                wait_timeout=write_timeout,
            )
        # Told how long each transaction took, and which function it ran (metrics).
        self.observe: Callable[[Callable[..., Any], float], None] | None = None
        self._prepare()

    def _prepare(self) -> None:
        """Build the prebuilt statements; each mixin extends this with its own."""
        self._repo_sql = _RepositoryStatements(self.dialect)

    # -- plumbing ------------------------------------------------------------------------
    # run_read/run_query/run_write run a function on a connection inside one transaction;
    # they are for this package's modules, not for callers above it.

    def insert(self, table: Any) -> sqlite_dialect.Insert | pg_dialect.Insert:
        return insert_for(self.dialect, table)

    def share(self, stmt: Any, table: Any) -> Any:
        return share_for(self.dialect, stmt, table)

    def exclusive(self, stmt: Any, table: Any) -> Any:
        if self.dialect == "postgresql":
            return stmt.with_for_update(of=table)
        return stmt

    async def run_read(
        self,
        fn: Callable[Concatenate[Connection, P], R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Run a read in one transaction, so its statements see one snapshot."""
        started = time.perf_counter()
        try:
            return await self._read(fn, False, *args, **kwargs)
        finally:
            if self.observe is not None:
                self.observe(fn, time.perf_counter() - started)

    async def run_query(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run a read of a single statement, which needs no transaction (hot paths).

        On SQLite it runs right here, on the event loop's thread: an indexed lookup takes
        microseconds, far less than handing it to a worker thread and back. WAL readers
        wait for no writer; in the rare moments they would (recovery, for one), the short
        busy timeout of this connection gives up and the read goes to a thread.
        """
        started = time.perf_counter()
        try:
            if self.dialect == "sqlite":
                try:
                    return self._read_here(fn, *args, **kwargs)
                except _Busy:
                    pass
            return await self._read(fn, True, *args, **kwargs)
        finally:
            if self.observe is not None:
                self.observe(fn, time.perf_counter() - started)

    async def run_driver_query(self, fn: Callable[[Any], R]) -> R:
        """`run_query` for a function of the driver's own connection (one that runs a
        DriverStatement with `rows_on`). On SQLite's inline connection it runs with no
        SQLAlchemy transaction around it: for one statement, whose BEGIN is skipped
        anyway, that transaction's begin and commit are bookkeeping only, as costly as
        the statement itself."""
        started = time.perf_counter()
        try:
            if self.dialect == "sqlite":
                try:
                    return self._driver_read_here(fn)
                except _Busy:
                    pass
            return await self._read(_on_driver, True, fn)
        finally:
            if self.observe is not None:
                self.observe(fn, time.perf_counter() - started)

    def _driver_read_here(self, fn: Callable[[Any], R]) -> R:
        here = threading.get_ident()
        try:
            return fn(DriverStatement._driver(self._here_connection(here)))
        except SQLAlchemyError as exc:
            self._inline_failed(here, exc)

    def _read_here(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        here = threading.get_ident()
        try:
            conn = self._here_connection(here)
            with conn.begin():
                return fn(conn, *args, **kwargs)
        except SQLAlchemyError as exc:
            self._inline_failed(here, exc)

    def _here_connection(self, here: int) -> Connection:
        """The inline connection of the thread `here`, made on its first read."""
        conn = self._here.get(here)
        if conn is None:
            conn = self.engine.connect()
            conn.execution_options(regd_single_read=True)
            with conn.begin():
                conn.exec_driver_sql(f"PRAGMA busy_timeout={INLINE_BUSY_MS}")
            self._here[here] = conn
        return conn

    def _inline_failed(self, here: int, exc: SQLAlchemyError) -> NoReturn:
        """Raise what a failed inline read means: _Busy to retry it on a thread, else a
        MetadataError."""
        # Whatever state the connection is in, the next read starts on a fresh one.
        self._drop_here(here)
        if isinstance(exc, DBAPIError) and retryable(exc):
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
        started = time.perf_counter()
        try:
            return await self._write(fn, *args, **kwargs)
        finally:
            if self.observe is not None:
                self.observe(fn, time.perf_counter() - started)

    async def _write(
        self, fn: Callable[Concatenate[Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        if self._batcher is not None:
            result: R = await self._batcher.run(lambda conn: fn(conn, *args, **kwargs))
            return result

        def run() -> R:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    with self.engine.connect() as conn:
                        conn.execution_options(regd_write=True)
                        with conn.begin():
                            return fn(conn, *args, **kwargs)
                except Retry:
                    time.sleep(0.005 * attempt)
                    continue
                except DBAPIError as exc:
                    # Serialization failures and deadlocks are the database asking us to
                    # try again; anything else is a real error.
                    if retryable(exc) and attempt < MAX_ATTEMPTS:
                        time.sleep(0.01 * (attempt + 1))
                        continue
                    raise self._as_metadata_error(exc) from exc
                except (SQLAlchemyError, self._dbapi_error) as exc:
                    raise self._as_metadata_error(exc) from exc
            raise self._as_metadata_error(Retry())

        # A write that has begun must finish or roll back by itself; cancelling the
        # waiting task must not leave the caller unsure whether it happened.
        with trio.CancelScope(shield=True):
            outcome = await trio.to_thread.run_sync(run, limiter=self._limiter)
        return outcome

    def _as_metadata_error(self, exc: BaseException) -> BaseException:
        """What a write's caller sees: MetadataError for a failure of the database, and
        anything else (a mistake in regd's own code) as it was raised."""
        if isinstance(exc, MetadataError):
            return exc
        if isinstance(exc, Retry):
            return MetadataError(f"database stayed busy; gave up after {MAX_ATTEMPTS} attempts")
        if isinstance(exc, (WriterFault, DatabaseFileGone)):
            # The writer thread's own failures: the lock file, the database file, the thread.
            return MetadataError(str(exc))
        if isinstance(exc, IntegrityError):
            return MetadataError(f"database constraint failed: {exc}")
        if isinstance(exc, (SQLAlchemyError, self._dbapi_error)):
            return MetadataError(f"database error: {exc}")
        return exc

    def create_schema(self) -> None:
        """Create missing tables (idempotent); run once before serving."""
        with self.engine.connect() as conn:
            conn.execution_options(regd_write=True)
            with conn.begin():
                if self.dialect == "postgresql":
                    # Several replicas may start at once.
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7220411)")
                t.metadata.create_all(conn, checkfirst=True)
                # create_all skips existing tables, and with them indexes added later.
                for index in (i for table in t.metadata.sorted_tables for i in table.indexes):
                    index.create(conn, checkfirst=True)
                version = conn.execute(select(func.max(t.schema_info.c.version))).scalar()
                if version is None:
                    conn.execute(t.schema_info.insert().values(version=t.SCHEMA_VERSION))
                elif version > t.SCHEMA_VERSION:
                    raise MetadataError(
                        f"the database has schema version {version}, newer than this regd "
                        f"understands ({t.SCHEMA_VERSION}); upgrade regd"
                    )

    def close(self) -> None:
        """Let go of every connection and the writer thread (blocking; see aclose)."""
        for thread in list(self._here):
            self._drop_here(thread)
        if self._batcher is not None:
            self._batcher.close()
        self.engine.dispose()

    async def aclose(self) -> None:
        # The inline connections belong to this thread's event loop: closed here.
        for thread in list(self._here):
            self._drop_here(thread)
        await trio.to_thread.run_sync(self.close)

    # -- repositories, which every concern looks up ---------------------------------------

    def _repo_id(self, conn: Connection, name: str) -> int | None:
        repo_id: int | None = conn.execute(self._repo_sql.repo_id, {"name": name}).scalar()
        return repo_id

    def _ensure_repo(self, conn: Connection, name: str) -> int:
        repo_id = self._repo_id(conn, name)
        if repo_id is None:
            repo_id = conn.execute(
                self._repo_sql.add_repo, {"name": name, "created_at": self.clock.now()}
            ).scalar()
        if repo_id is None:
            # Created by a concurrent transaction since we looked (PostgreSQL).
            repo_id = self._repo_id(conn, name)
        assert repo_id is not None
        return repo_id
