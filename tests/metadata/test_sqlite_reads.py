"""SQLite point reads on the event loop's thread, and their way out when SQLite is busy."""

from __future__ import annotations

import sqlite3
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from sqlalchemy import Connection, event
from sqlalchemy.exc import OperationalError

from regd.metadata import MetadataError, MetadataStore

DIGEST = "sha256:" + "5" * 64

# SQLite only: the store fixture on its embedded database.
pytestmark = pytest.mark.parametrize("database_url", [None])


@pytest.fixture
async def a_blob(store: MetadataStore) -> None:
    # Asked for by name: pytest-trio sets up only the async fixtures a test names.
    await store.link_blob("repo", DIGEST, 123)


async def test_point_reads_need_no_worker_thread(
    store: MetadataStore, a_blob: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_threads(*args: object, **kwargs: object) -> None:
        raise AssertionError("a point read went to a worker thread")

    with monkeypatch.context() as patch:
        patch.setattr(trio.to_thread, "run_sync", no_threads)
        assert await store.blob_size("repo", DIGEST) == 123
        assert await store.blob_size("other", DIGEST) is None
        assert await store.get_manifest("repo", tag="latest") is None


class _BusyConnection:
    """Stands in for the loop thread's connection while SQLite reports itself busy."""

    closed = False

    def begin(self) -> None:
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))

    def close(self) -> None:
        self.closed = True


async def test_a_busy_database_moves_the_read_to_a_thread(
    store: MetadataStore, a_blob: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = _BusyConnection()
    store._here[threading.get_ident()] = busy  # type: ignore[assignment]
    threads = 0
    run_sync = trio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal threads
        threads += 1
        return await run_sync(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trio.to_thread, "run_sync", counting)
        assert await store.blob_size("repo", DIGEST) == 123
        assert threads == 1
        assert busy.closed
        # The next read is on the loop again, on a fresh connection.
        assert await store.blob_size("repo", DIGEST) == 123
        assert threads == 1


async def test_other_database_errors_are_metadata_errors(
    store: MetadataStore, a_blob: None
) -> None:
    def broken(conn: Connection) -> None:
        conn.exec_driver_sql("SELECT * FROM no_such_table")

    with pytest.raises(MetadataError):
        await store.run_query(broken)
    assert await store.blob_size("repo", DIGEST) == 123


class _BusyDriver:
    """The driver's connection while SQLite reports itself busy."""

    def cursor(self) -> Any:
        return self

    def execute(self, *args: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    def close(self) -> None:
        pass


class _BusyDriverConnection(_BusyConnection):
    @property
    def connection(self) -> Any:
        """As SQLAlchemy's: the pool's record of the driver's connection."""
        return SimpleNamespace(dbapi_connection=_BusyDriver())


async def test_a_busy_database_moves_a_manifest_lookup_to_a_thread(
    store: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = _BusyDriverConnection()
    store._here[threading.get_ident()] = busy  # type: ignore[assignment]
    threads = 0
    run_sync = trio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal threads
        threads += 1
        return await run_sync(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trio.to_thread, "run_sync", counting)
        assert await store.get_manifest("repo", tag="latest") is None
        assert threads == 1
        assert busy.closed
        assert await store.get_manifest("repo", tag="latest") is None
        assert threads == 1


async def test_a_manifest_lookup_begins_no_transaction(store: MetadataStore) -> None:
    # The inline connection exists, made by an earlier read.
    assert await store.blob_size("repo", DIGEST) is None
    begun: list[object] = []
    listener = begun.append
    event.listen(store.engine, "begin", listener)
    try:
        assert await store.get_manifest("repo", tag="latest") is None
        assert await store.get_manifest("repo", digest=DIGEST, with_payload=False) is None
    finally:
        event.remove(store.engine, "begin", listener)
    assert begun == []
