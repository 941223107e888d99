"""Group commit on SQLite: writes that share a commit still succeed or fail one by one."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from sqlalchemy import Connection, select

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
