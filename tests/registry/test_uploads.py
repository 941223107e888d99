"""Upload sessions in the domain layer: leases, rollback, and continuing across processes.

Two `Uploads` objects over one storage and one database stand for two regd processes: they
share nothing in memory, so a session moved between them must be re-hashed from storage.

Time is the test's: tests about leases run trio on a MockClock, and the store writes lease
times from a wall clock that moves with it (tests/registry/clocks.py). Bodies that should
be slow wait for an event instead of sleeping, so nothing depends on how fast the
machine is.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from regd.errors import BlobUploadInvalid, DigestInvalid, RangeInvalid, SizeInvalid
from regd.metadata import MetadataStore, sqlite_url
from regd.metadata.rules import blob_lease
from regd.oci.digest import Digest
from regd.registry import Uploads
from regd.registry.streaming import WRITE_CHUNK
from regd.storage import FilesystemDriver, PathNotFound, StorageDriver, StorageError, layout
from regd.storage.base import StagedWriter
from tests.registry.clocks import TrioWallClock, open_store


@pytest.fixture
async def metadata(tmp_path: Path, database_url: str | None) -> AsyncIterator[MetadataStore]:
    url = database_url or sqlite_url(tmp_path / "m.db")
    store = open_store(url, TrioWallClock())
    store.create_schema()
    yield store
    await store.aclose()


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "blobs")


async def chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class HeldBody:
    """A request body that sends `first`, then waits until the test lets it send `rest`:
    a client as slow as the test needs."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self.first, self.rest = first, rest
        self.waiting = trio.Event()  # everything before `rest` was consumed
        self.go = trio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.first:
            yield self.first
        self.waiting.set()
        await self.go.wait()
        yield self.rest


class Calls:
    """Counts the finished calls of one store method, so a test can wait for them."""

    def __init__(self, metadata: MetadataStore, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[Any] = []
        self._changed = trio.Event()
        method = getattr(metadata, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            result = await method(*args, **kwargs)
            self.results.append(result)
            self._changed.set()
            self._changed = trio.Event()
            return result

        monkeypatch.setattr(metadata, name, counted)

    async def wait_for(self, count: int, result: Any = True) -> None:
        """Until `count` calls have returned `result`."""
        while self.results.count(result) < count:
            await self._changed.wait()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_body_longer_than_announced(storage: StorageDriver, metadata: MetadataStore) -> None:
    uploads = Uploads(storage, metadata)
    session = await uploads.start("repo")
    with pytest.raises(SizeInvalid):
        await uploads.append("repo", session.id, chunks([b"x" * 10, b"y" * 10]), length=15)
    assert (await uploads.status("repo", session.id)).size == 0
    with pytest.raises(SizeInvalid):
        await uploads.monolithic("repo", sha256(b"abc"), chunks([b"abcd"]), 3)


async def test_session_alternating_between_processes(
    storage: StorageDriver, metadata: MetadataStore
) -> None:
    one, two = Uploads(storage, metadata), Uploads(storage, metadata)
    parts = [os.urandom(300_000) for _ in range(5)]
    session = await one.start("repo")
    offset = 0
    for i, part in enumerate(parts):
        worker = one if i % 2 == 0 else two
        status = await worker.append("repo", session.id, chunks([part]), start=offset)
        offset += len(part)
        assert status.size == offset
    data = b"".join(parts)
    blob = await two.finish("repo", session.id, sha256(data), chunks([]))
    assert str(blob.digest) == sha256(data)
    assert await storage.get_content(layout.blob_data(blob.digest)) == data


async def test_finish_elsewhere_detects_a_wrong_digest(
    storage: StorageDriver, metadata: MetadataStore
) -> None:
    one, two = Uploads(storage, metadata), Uploads(storage, metadata)
    session = await one.start("repo")
    await one.append("repo", session.id, chunks([b"content"]))
    with pytest.raises(DigestInvalid):
        await two.finish("repo", session.id, sha256(b"other"), chunks([]))


@pytest.mark.timeout(30)  # without renewal, the wait for the first one never ends
async def test_lease_is_renewed_while_a_slow_body_streams(
    storage: StorageDriver,
    metadata: MetadataStore,
    mock_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploads = Uploads(storage, metadata, lease_seconds=0.3)
    rival = Uploads(storage, metadata, lease_seconds=0.3)
    session = await uploads.start("repo")
    renewals = Calls(metadata, "renew_upload", monkeypatch)
    body = HeldBody(b"a" * 6, b"a" * 6)
    done = trio.Event()

    async def slow() -> None:
        assert (await uploads.append("repo", session.id, body)).size == 12
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await body.waiting.wait()
        # Time moves only here, a third of the lease at a time, each step once the
        # renewal it triggers is written.
        for step in range(1, 5):
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(0.11)
            await renewals.wait_for(step)
        # Well past the lease's lifetime the request still holds it.
        intruder = await metadata.acquire_upload(session.id, "x", expected_size=None, ttl=5)
        assert intruder is None
        body.go.set()
        await done.wait()
    # The rival appends after the slow request, never in between.
    assert (await rival.append("repo", session.id, chunks([b"b"]))).size == 13
    data = await storage.get_content(layout.upload_data("repo", session.id))
    assert data == b"a" * 12 + b"b"


# The clock stands still (the writer's bounded waits are on trio's clock too, so an
# autojumping clock would time them out while a worker thread runs): a wait for a lease
# would never end, and the timeout fails the test.
@pytest.mark.timeout(60)
async def test_a_chunk_at_the_wrong_offset_fails_at_once(
    storage: StorageDriver, metadata: MetadataStore, mock_clock: trio.testing.MockClock
) -> None:
    uploads = Uploads(storage, metadata)
    session = await uploads.start("repo")
    await uploads.append("repo", session.id, chunks([b"abc"]))
    with pytest.raises(RangeInvalid):
        await uploads.append("repo", session.id, chunks([b"x"]), start=1)


class FailingWrites:
    """Wraps a driver; writers fail after `budget` bytes, as a full disk would."""

    def __init__(self, inner: FilesystemDriver, budget: int) -> None:
        self._inner = inner
        self._budget = budget
        self.name = "failing"

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def put_content(self, path: str, data: bytes) -> None:
        if len(data) > self._budget:
            raise StorageError("No space left on device")
        await self._inner.put_content(path, data)

    async def new_file(self, path: str, *, staging: str) -> object:
        writer = await self.writer(staging)
        return StagedWriter(self, writer, staging, path)  # type: ignore[arg-type]

    async def writer(self, path: str, *, offset: int = 0) -> object:
        inner = await self._inner.writer(path, offset=offset)
        budget = self._budget

        class Writer:
            size = property(lambda _self: inner.size)

            async def write(
                self, data: bytes, also: Callable[[bytes], object] | None = None
            ) -> None:
                nonlocal budget
                if len(data) > budget:
                    raise StorageError("No space left on device")
                budget -= len(data)
                await inner.write(data, also)

            async def commit(self) -> None:
                await inner.commit()

            async def cancel(self) -> None:
                await inner.cancel()

        return Writer()


async def test_a_failing_disk_leaves_the_session_as_it_was(
    storage: FilesystemDriver, metadata: MetadataStore
) -> None:
    good = Uploads(storage, metadata)
    session = await good.start("repo")
    await good.append("repo", session.id, chunks([b"x" * 1000]))
    bad = Uploads(FailingWrites(storage, budget=100), metadata)  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        await bad.append("repo", session.id, chunks([os.urandom(3 * 1024 * 1024)]), start=1000)
    assert (await good.status("repo", session.id)).size == 1000
    stat = await storage.stat(layout.upload_data("repo", session.id))
    assert stat.size == 1000
    with pytest.raises(StorageError):
        await bad.monolithic("repo", sha256(b"y" * 5000), chunks([b"y" * 5000]), 5000)
    # Nor a small blob written in one piece, nor anything recorded of it.
    with pytest.raises(StorageError):
        await bad.monolithic("repo", sha256(b"y" * 5000), chunks([b"y" * 5000]), None)
    assert await metadata.blob_size("repo", sha256(b"y" * 5000)) is None
    with pytest.raises(PathNotFound):
        await storage.stat(layout.blob_data(Digest.of(b"y" * 5000)))
    await good.append("repo", session.id, chunks([b"z"]), start=1000)
    blob = await good.finish("repo", session.id, sha256(b"x" * 1000 + b"z"), chunks([]))
    assert blob.size == 1001


async def test_upload_whose_data_vanished(
    storage: FilesystemDriver, metadata: MetadataStore
) -> None:
    uploads = Uploads(storage, metadata)
    session = await uploads.start("repo")
    await uploads.append("repo", session.id, chunks([b"x" * 10]))
    await storage.delete(layout.upload_dir("repo", session.id))
    with pytest.raises(BlobUploadInvalid):
        await uploads.append("repo", session.id, chunks([b"y"]))


# -- the blob's lease ------------------------------------------------------------------


class Spy:
    """Counts the store's write transactions and notes when the blob's lease came along
    with the session's."""

    def __init__(self, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes = 0
        self.folded: list[bool] = []
        run_write = metadata.run_write
        acquire = metadata.acquire_upload_and_lock

        async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            return await run_write(fn, *args, **kwargs)

        async def noting(*args: Any, **kwargs: Any) -> Any:
            info, taken = await acquire(*args, **kwargs)
            self.folded.append(taken)
            return info, taken

        monkeypatch.setattr(metadata, "run_write", counting)
        monkeypatch.setattr(metadata, "acquire_upload_and_lock", noting)


async def test_a_small_put_takes_both_leases_at_once(
    storage: StorageDriver, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = Uploads(storage, metadata)
    session = await uploads.start("repo")
    spy = Spy(metadata, monkeypatch)
    await uploads.finish("repo", session.id, sha256(b"small"), chunks([b"small"]), length=5)
    # One transaction takes both leases, one links the blob and releases them.
    assert spy.writes == 2
    assert spy.folded == [True]
    assert await metadata.blob_size("repo", sha256(b"small")) == 5
    assert await metadata.acquire_lock(blob_lease(sha256(b"small")), "probe", 60)


async def test_a_wrong_digest_releases_both_leases(
    storage: StorageDriver, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = Uploads(storage, metadata)
    session = await uploads.start("repo")
    spy = Spy(metadata, monkeypatch)
    claimed = sha256(b"other")
    with pytest.raises(DigestInvalid):
        await uploads.finish("repo", session.id, claimed, chunks([b"content"]), length=7)
    assert spy.folded == [True]
    assert await metadata.acquire_lock(blob_lease(claimed), "probe", 60)
    assert await metadata.get_upload(session.id) is None
    assert await metadata.global_blob_size(claimed) is None


@pytest.mark.timeout(60)
async def test_a_failing_disk_releases_both_leases(
    storage: FilesystemDriver,
    metadata: MetadataStore,
    monkeypatch: pytest.MonkeyPatch,
    mock_clock: trio.testing.MockClock,
) -> None:
    good = Uploads(storage, metadata)
    bad = Uploads(FailingWrites(storage, budget=0), metadata)  # type: ignore[arg-type]
    session = await good.start("repo")
    spy = Spy(metadata, monkeypatch)
    with pytest.raises(StorageError):
        await bad.finish("repo", session.id, sha256(b"data"), chunks([b"data"]), length=4)
    assert spy.folded == [True]
    assert await metadata.acquire_lock(blob_lease(sha256(b"data")), "probe", 60)
    await metadata.release_lock(blob_lease(sha256(b"data")), "probe")
    # The session is free and as it was: it can still be completed without a wait (on
    # the standing clock a wait would never end).
    await good.finish("repo", session.id, sha256(b"data"), chunks([b"data"]), length=4)
    assert await metadata.blob_size("repo", sha256(b"data")) == 4


class Put:
    """A PUT completing a session, run as a task, with the times it was refused the
    blob's lease (a holder other than "sweeper" asking).

    Once a refusal is counted the PUT is asleep before its next try: trio runs it on to
    that sleep before the test sees the count. So a test that jumps the clock only then
    knows each jump wakes it exactly once."""

    def __init__(self, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done = trio.Event()
        self.refusals = 0
        self._changed = trio.Event()
        acquire = metadata.acquire_lock

        async def noting(name: str, holder: str, ttl: float) -> bool:
            taken = await acquire(name, holder, ttl)
            if not taken and holder != "sweeper":
                self.refusals += 1
                self._signal()
            return taken

        monkeypatch.setattr(metadata, "acquire_lock", noting)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, uploads: Uploads, session: str, digest: str, body: Any) -> None:
        await uploads.finish("repo", session, digest, body, length=7)
        self.done.set()
        self._signal()

    async def refused_or_done(self, refusals: int = 1) -> None:
        while self.refusals < refusals and not self.done.is_set():
            await self._changed.wait()


async def test_a_put_waits_for_a_busy_blob_lease(
    storage: StorageDriver,
    metadata: MetadataStore,
    monkeypatch: pytest.MonkeyPatch,
    mock_clock: trio.testing.MockClock,
) -> None:
    uploads = Uploads(storage, metadata)
    digest = sha256(b"payload")
    # As a sweep holds it while it removes the blob.
    assert await metadata.acquire_lock(blob_lease(digest), "sweeper", 60)
    session = await uploads.start("repo")
    spy = Spy(metadata, monkeypatch)
    put = Put(metadata, monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(put.run, uploads, session.id, digest, chunks([b"payload"]))
        await put.refused_or_done()
        assert not put.done.is_set()
        assert await metadata.blob_size("repo", digest) is None
        await metadata.release_lock(blob_lease(digest), "sweeper")
        mock_clock.jump(1)  # past the PUT's next try
        await put.done.wait()
    assert spy.folded == [False]
    assert await metadata.blob_size("repo", digest) == 7


async def test_a_blob_lease_held_too_long_is_taken_again(
    storage: StorageDriver,
    metadata: MetadataStore,
    monkeypatch: pytest.MonkeyPatch,
    mock_clock: trio.testing.MockClock,
) -> None:
    uploads = Uploads(storage, metadata, blob_lease_seconds=0.5)
    digest = sha256(b"trickle")
    session = await uploads.start("repo")
    spy = Spy(metadata, monkeypatch)
    put = Put(metadata, monkeypatch)
    body = HeldBody(b"", b"trickle")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(put.run, uploads, session.id, digest, body)
        await body.waiting.wait()
        assert spy.folded == [True]
        mock_clock.jump(0.75)
        # The slow body outlived the blob's lease: someone else may take it over, and
        # the upload must not place its file while they hold it.
        assert await metadata.acquire_lock(blob_lease(digest), "sweeper", 60)
        body.go.set()
        await put.refused_or_done()
        assert not put.done.is_set()
        assert await metadata.blob_size("repo", digest) is None
        await metadata.release_lock(blob_lease(digest), "sweeper")
        mock_clock.jump(1)  # past the PUT's next try
        await put.done.wait()
    assert await metadata.blob_size("repo", digest) == 7


async def test_a_large_body_streams_without_the_blob_lease(
    storage: StorageDriver, metadata: MetadataStore
) -> None:
    uploads = Uploads(storage, metadata)
    data = os.urandom(WRITE_CHUNK + 1)
    digest = sha256(data)
    session = await uploads.start("repo")
    body = HeldBody(data[:1000], data[1000:])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(uploads.finish, "repo", session.id, digest, body, length=len(data))
        )
        await body.waiting.wait()
        assert await metadata.acquire_lock(blob_lease(digest), "probe", 60)
        await metadata.release_lock(blob_lease(digest), "probe")
        body.go.set()
    assert await metadata.blob_size("repo", digest) == len(data)


async def test_a_large_session_finishes_without_the_blob_lease_up_front(
    storage: StorageDriver, metadata: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = Uploads(storage, metadata)
    data = os.urandom(WRITE_CHUNK + 1)
    session = await uploads.start("repo")
    await uploads.append("repo", session.id, chunks([data]))
    spy = Spy(metadata, monkeypatch)
    # A small last chunk, but re-hashing the session could take long: not the fast way.
    await uploads.finish("repo", session.id, sha256(data), chunks([]), length=0)
    assert spy.folded == [False]
    assert await metadata.blob_size("repo", sha256(data)) == len(data)


async def test_a_small_blob_goes_straight_to_its_place(
    storage: FilesystemDriver, metadata: MetadataStore, tmp_path: Path
) -> None:
    uploads = Uploads(storage, metadata)
    data = b"small layer" * 100
    # Whole in the POST, and whole in the PUT of a fresh session.
    await uploads.monolithic("repo", sha256(data), chunks([data[:7], data[7:]]), len(data))
    session = await uploads.start("other")
    await uploads.finish("other", session.id, sha256(data), chunks([data]), length=len(data))
    for repo in ("repo", "other"):
        assert await metadata.blob_size(repo, sha256(data)) == len(data)
    reader = await storage.reader(layout.blob_data(Digest.of(data)))
    assert await reader.read(len(data) + 1) == data
    await reader.aclose()
    # Neither went through a session file, and the session is over.
    assert not list(tmp_path.rglob("_uploads/*"))
    assert await metadata.get_upload(session.id) is None


async def test_a_small_body_shorter_than_announced_keeps_the_session(
    storage: FilesystemDriver, metadata: MetadataStore
) -> None:
    uploads = Uploads(storage, metadata)
    session = await uploads.start("repo")
    with pytest.raises(SizeInvalid):
        await uploads.finish("repo", session.id, sha256(b"abc"), chunks([b"ab"]), length=3)
    with pytest.raises(SizeInvalid):
        await uploads.monolithic("repo", sha256(b"abc"), chunks([b"ab"]), 3)
    assert await metadata.blob_size("repo", sha256(b"abc")) is None
    assert (await uploads.status("repo", session.id)).size == 0
    blob = await uploads.finish("repo", session.id, sha256(b"abc"), chunks([b"abc"]), length=3)
    assert blob.size == 3


@pytest.mark.timeout(30)  # without renewal, the wait for the first one never ends
async def test_the_session_stays_held_while_a_put_waits_for_the_blob_lease(
    storage: StorageDriver,
    metadata: MetadataStore,
    monkeypatch: pytest.MonkeyPatch,
    mock_clock: trio.testing.MockClock,
) -> None:
    uploads = Uploads(storage, metadata, lease_seconds=0.6)
    digest = sha256(b"payload")
    assert await metadata.acquire_lock(blob_lease(digest), "sweeper", 60)
    session = await uploads.start("repo")
    renewals = Calls(metadata, "renew_upload", monkeypatch)
    put = Put(metadata, monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(put.run, uploads, session.id, digest, chunks([b"payload"]))
        await put.refused_or_done()
        # Time moves only here, a third of the session's lease at a time, each step once
        # the renewal it triggers is written and the PUT has tried the blob's lease again.
        for step in range(1, 5):
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(0.21)
            await renewals.wait_for(step)
            await put.refused_or_done(step + 1)
        # Well past the session lease's life, the waiting PUT still holds the session:
        # no other request may take it and write to the file about to become the blob.
        assert not put.done.is_set()
        intruder = await metadata.acquire_upload(session.id, "x", expected_size=None, ttl=5)
        assert intruder is None
        await metadata.release_lock(blob_lease(digest), "sweeper")
        mock_clock.jump(0.15)  # past the PUT's next try (at most 0.1 s away)
        await put.done.wait()
    assert await metadata.blob_size("repo", digest) == 7


async def test_a_large_blob_in_the_put_of_an_empty_session_is_checked_before_it_shows(
    storage: FilesystemDriver, metadata: MetadataStore
) -> None:
    uploads = Uploads(storage, metadata)
    data = os.urandom(3 * WRITE_CHUNK + 5)
    digest = sha256(data)
    blob = layout.blob_data(Digest.of(data))
    session = await uploads.start("repo")
    # Cut short: nothing stored, and the session is still there, empty.
    with pytest.raises(SizeInvalid):
        await uploads.finish("repo", session.id, digest, chunks([data[:-1]]), length=len(data))
    assert (await uploads.status("repo", session.id)).size == 0
    with pytest.raises(PathNotFound):
        await storage.stat(blob)
    # While the body streams, nothing is at the blob's path.
    body = HeldBody(data[: 2 * WRITE_CHUNK], data[2 * WRITE_CHUNK :])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(uploads.finish, "repo", session.id, digest, body, length=len(data))
        )
        await body.waiting.wait()
        with pytest.raises(PathNotFound):
            await storage.stat(blob)
        body.go.set()
    assert await metadata.blob_size("repo", digest) == len(data)
    assert await metadata.get_upload(session.id) is None
    reader = await storage.reader(blob)
    assert await reader.read(len(data) + 1) == data
    await reader.aclose()
    # A wrong digest discards the session and stores nothing under either digest.
    other = await uploads.start("repo")
    wrong = sha256(b"not this")
    with pytest.raises(DigestInvalid):
        await uploads.finish("repo", other.id, wrong, chunks([data[::-1]]), length=len(data))
    assert await metadata.get_upload(other.id) is None
    with pytest.raises(PathNotFound):
        await storage.stat(layout.blob_data(Digest.of(data[::-1])))
