"""Group commit on SQLite: writes that share a commit still succeed or fail one by one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from sqlalchemy import Connection, event, select

from regd.metadata import (
    MetadataError,
    MetadataStore,
    MissingReferences,
    NewManifest,
    sqlite_url,
)
from regd.metadata import schema as t
from regd.metadata.batching import Retry


def manifest(i: int, blobs: list[str]) -> NewManifest:
    return NewManifest(
        digest="sha256:" + f"{i:064x}",
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=2,
        payload=b"{}",
        artifact_type=None,
        subject=None,
        annotations={},
        blobs=blobs,
    )


async def test_a_failing_write_does_not_spoil_its_batch(tmp_path: Path) -> None:
    store = MetadataStore(sqlite_url(tmp_path / "m.db"))
    store.create_schema()
    good_blob = "sha256:" + "1" * 64
    await store.link_blob("r", good_blob, 1)
    outcomes: dict[int, str] = {}

    async def push(i: int) -> None:
        blobs = [good_blob] if i % 3 else ["sha256:" + "9" * 64]
        try:
            await store.put_manifest("r", manifest(i, blobs), [f"t{i}"])
            outcomes[i] = "ok"
        except MissingReferences:
            outcomes[i] = "missing"

    async with trio.open_nursery() as nursery:
        for i in range(60):
            nursery.start_soon(push, i)
    assert outcomes == {i: "ok" if i % 3 else "missing" for i in range(60)}
    page = await store.list_tags("r", None, None)
    assert page is not None
    assert sorted(page.items) == sorted(f"t{i}" for i in range(60) if i % 3)
    await store.aclose()


async def test_writes_after_close_restart_the_writer(tmp_path: Path) -> None:
    store = MetadataStore(sqlite_url(tmp_path / "m.db"))
    store.create_schema()
    await store.link_blob("r", "sha256:" + "2" * 64, 1)
    await store.aclose()
    await store.link_blob("r", "sha256:" + "3" * 64, 1)
    assert await store.global_blob_size("sha256:" + "3" * 64) == 1
    with pytest.raises(MissingReferences):
        await store.put_manifest("r", manifest(1, ["sha256:" + "4" * 64]), [])
    await store.aclose()


# -- one transaction per batch, savepoints only when something fails -------------------


class Recorder:
    """Write functions that leave a row each and note whether they ran in a savepoint."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, bool]] = []
        self.retries: dict[str, int] = {}

    def write(
        self, name: str, *, fail: bool = False, retries: int = 0
    ) -> Callable[[Connection], str]:
        self.retries[name] = retries

        def fn(conn: Connection) -> str:
            self.runs.append((name, conn.in_nested_transaction()))
            conn.execute(t.locks.insert().values(name=name, holder="test", until=0.0))
            if self.retries[name] > 0:
                self.retries[name] -= 1
                raise Retry()
            if fail:
                raise ValueError(name)
            return name

        return fn


async def in_one_batch(
    store: MetadataStore, fns: list[Callable[[Connection], str]]
) -> list[str | BaseException]:
    """Run the writes as one batch: the writer is kept busy until all of them are queued."""
    busy, go = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:
        busy.set()
        go.wait(10)

    outcomes: dict[int, str | BaseException] = {}

    async def run(i: int, fn: Callable[[Connection], str]) -> None:
        try:
            outcomes[i] = await store.run_write(fn)
        except Exception as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run_write, hold)
        await trio.to_thread.run_sync(busy.wait)
        for i, fn in enumerate(fns):
            nursery.start_soon(run, i, fn)
            # Queued in this order, one by one.
            await trio.testing.wait_all_tasks_blocked()
        go.set()
    return [outcomes[i] for i in range(len(fns))]


async def lock_names(store: MetadataStore) -> list[str]:
    return await store.run_read(lambda conn: sorted(conn.execute(select(t.locks.c.name)).scalars()))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MetadataStore]:
    s = MetadataStore(sqlite_url(tmp_path / "m.db"))
    s.create_schema()
    yield s
    await s.aclose()


async def test_a_batch_that_succeeds_runs_without_savepoints(store: MetadataStore) -> None:
    rec = Recorder()
    outcomes = await in_one_batch(store, [rec.write("a"), rec.write("b"), rec.write("c")])
    assert outcomes == ["a", "b", "c"]
    assert rec.runs == [("a", False), ("b", False), ("c", False)]
    assert await lock_names(store) == ["a", "b", "c"]


async def test_a_failure_reruns_the_batch_with_savepoints(store: MetadataStore) -> None:
    rec = Recorder()
    outcomes = await in_one_batch(
        store, [rec.write("a"), rec.write("b", fail=True), rec.write("c")]
    )
    assert outcomes[0] == "a"
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2] == "c"
    # Tried together first; after the failure, again one savepoint each.
    assert rec.runs == [("a", False), ("b", False), ("a", True), ("b", True), ("c", True)]
    # The others' rows are committed once, the failing one's row is rolled back.
    assert await lock_names(store) == ["a", "c"]


async def test_a_failing_write_alone_runs_once(store: MetadataStore) -> None:
    rec = Recorder()
    outcomes = await in_one_batch(store, [rec.write("a", fail=True)])
    assert isinstance(outcomes[0], ValueError)
    assert rec.runs == [("a", False)]
    assert await lock_names(store) == []


async def test_a_write_asking_to_retry_runs_again_later(store: MetadataStore) -> None:
    rec = Recorder()
    outcomes = await in_one_batch(store, [rec.write("a"), rec.write("r", retries=2)])
    assert outcomes == ["a", "r"]
    assert rec.runs[:4] == [("a", False), ("r", False), ("a", True), ("r", True)]
    # Its next run is in a later transaction, where it has that to itself.
    assert rec.runs[4:] == [("r", False)]
    assert await lock_names(store) == ["a", "r"]


async def test_a_constraint_violation_fails_only_its_write(store: MetadataStore) -> None:
    rec = Recorder()
    outcomes = await in_one_batch(store, [rec.write("a"), rec.write("a"), rec.write("b")])
    assert outcomes[0] == "a"
    assert isinstance(outcomes[1], MetadataError)
    assert outcomes[2] == "b"
    assert await lock_names(store) == ["a", "b"]


# -- the writer outlives its failures, and nobody waits on it without bound ---------------


def lock_file(tmp_path: Path) -> Path:
    return tmp_path / "m.db.writelock"


async def test_a_failing_writer_fails_the_write_and_then_recovers(tmp_path: Path) -> None:
    store = MetadataStore(sqlite_url(tmp_path / "m.db"))
    store.create_schema()
    await store.link_blob("r", "sha256:" + "1" * 64, 1)
    lock_file(tmp_path).unlink()
    lock_file(tmp_path).mkdir()
    with pytest.raises(MetadataError, match=r"cannot open the lock file .*m\.db\.writelock"):
        await store.link_blob("r", "sha256:" + "2" * 64, 1)
    lock_file(tmp_path).rmdir()
    await store.link_blob("r", "sha256:" + "3" * 64, 1)
    assert await store.global_blob_size("sha256:" + "2" * 64) is None
    assert await store.global_blob_size("sha256:" + "3" * 64) == 1
    await store.aclose()


async def test_a_writer_thread_that_ended_is_replaced(tmp_path: Path) -> None:
    store = MetadataStore(sqlite_url(tmp_path / "m.db"))
    store.create_schema()
    await store.link_blob("r", "sha256:" + "1" * 64, 1)
    batcher = store._batcher
    assert batcher is not None
    assert batcher._thread is not None
    gone = batcher._thread
    # The thread ends while still registered as the writer, as when it died.
    batcher._queue.put(None)
    gone.join()
    await store.link_blob("r", "sha256:" + "2" * 64, 1)
    assert batcher._thread is not gone
    assert await store.global_blob_size("sha256:" + "2" * 64) == 1
    await store.aclose()


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def give_up_on_held_lock(
    store: MetadataStore, clock: trio.testing.MockClock, digest: str
) -> MetadataError:
    """Write while the lock is held elsewhere; return how the write failed."""
    failures: list[MetadataError] = []

    async def write() -> None:
        try:
            await store.link_blob("r", digest, 1)
        except MetadataError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(5)
    assert len(failures) == 1
    return failures[0]


async def test_a_write_gives_up_on_a_held_lock_and_is_withdrawn(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = MetadataStore(sqlite_url(tmp_path / "m.db"), write_timeout=5)
    store.create_schema()
    await store.link_blob("r", "sha256:" + "1" * 64, 1)
    with held(lock_file(tmp_path)):
        failure = await give_up_on_held_lock(store, mock_clock, "sha256:" + "2" * 64)
    assert "did not answer within 5 s" in str(failure)
    await store.link_blob("r", "sha256:" + "3" * 64, 1)
    # The caller was told it failed: the writer, once it had the lock, left it undone.
    assert await store.global_blob_size("sha256:" + "2" * 64) is None
    assert await store.global_blob_size("sha256:" + "3" * 64) == 1
    await store.aclose()


async def test_close_does_not_wait_for_a_stuck_writer(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # close() gives the stuck writer wait_timeout of real time, then leaves it behind.
    store = MetadataStore(sqlite_url(tmp_path / "m.db"), write_timeout=0.2)
    store.create_schema()
    await store.link_blob("r", "sha256:" + "1" * 64, 1)
    with held(lock_file(tmp_path)):
        await give_up_on_held_lock(store, mock_clock, "sha256:" + "2" * 64)
        await store.aclose()


async def test_writes_queued_while_another_process_commits_join_the_next_commit(
    tmp_path: Path,
) -> None:
    # With several workers, a writer often waits for the lock while another process
    # commits; what its process queues meanwhile must not wait for a commit of its own.
    store = MetadataStore(sqlite_url(tmp_path / "m.db"))
    store.create_schema()
    await store.link_blob("r", "sha256:" + "0" * 64, 1)
    batcher = store._batcher
    assert batcher is not None
    commits: list[int] = []

    def on_commit(conn: Connection) -> None:
        if conn.get_execution_options().get("regd_write"):
            commits.append(1)

    event.listen(store.engine, "commit", on_commit)
    digests = ["sha256:" + f"{i:064x}" for i in range(1, 9)]
    with contextlib.ExitStack() as other_process:
        other_process.enter_context(held(lock_file(tmp_path)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.link_blob, "r", digests[0], 1)
            # The writer has taken the first write and waits for the lock.
            with trio.fail_after(30):
                while batcher._blocked_on is None:
                    await trio.sleep(0.01)
            for digest in digests[1:]:
                nursery.start_soon(store.link_blob, "r", digest, 1)
            await trio.testing.wait_all_tasks_blocked()
            other_process.close()
    assert len(commits) == 1
    for digest in digests:
        assert await store.global_blob_size(digest) == 1
    await store.aclose()


async def test_writes_stop_when_the_database_file_is_removed(tmp_path: Path) -> None:
    database = tmp_path / "m.db"
    store = MetadataStore(sqlite_url(database))
    store.create_schema()
    await store.link_blob("r", "sha256:" + "1" * 64, 1)
    moved = tmp_path / "elsewhere.db"
    database.rename(moved)
    with pytest.raises(MetadataError, match=f"the database file {database} was removed"):
        await store.link_blob("r", "sha256:" + "2" * 64, 1)
    # No empty database was created in its place.
    assert not database.exists()
    # Put back, the same file is accepted again.
    moved.rename(database)
    await store.link_blob("r", "sha256:" + "3" * 64, 1)
    assert await store.global_blob_size("sha256:" + "2" * 64) is None
    assert await store.global_blob_size("sha256:" + "3" * 64) == 1
    await store.aclose()
