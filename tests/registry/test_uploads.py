"""Upload sessions in the domain layer: leases, rollback, and continuing across processes.

Two `Uploads` objects over one storage and one database stand for two regd processes: they
share nothing in memory, so a session moved between them must be re-hashed from storage.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import trio

from regd.errors import BlobUploadInvalid, DigestInvalid, RangeInvalid, SizeInvalid
from regd.metadata import MetadataStore, sqlite_url
from regd.registry import Uploads
from regd.storage import FilesystemDriver, StorageDriver, StorageError, layout


@pytest.fixture
async def metadata(tmp_path: Path, database_url: str | None) -> AsyncIterator[MetadataStore]:
    store = MetadataStore(database_url or sqlite_url(tmp_path / "m.db"))
    store.create_schema()
    yield store
    await store.aclose()


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "blobs")


async def chunks(parts: Iterable[bytes], delay: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if delay:
            await trio.sleep(delay)
        yield part


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


async def test_lease_is_renewed_while_a_slow_body_streams(
    storage: StorageDriver, metadata: MetadataStore
) -> None:
    uploads = Uploads(storage, metadata, lease_seconds=0.3)
    rival = Uploads(storage, metadata, lease_seconds=0.3)
    session = await uploads.start("repo")
    finished: list[tuple[str, int]] = []

    async def slow() -> None:
        status = await uploads.append("repo", session.id, chunks([b"a"] * 12, delay=0.1))
        finished.append(("slow", status.size))

    async def second() -> None:
        status = await rival.append("repo", session.id, chunks([b"b"]))
        finished.append(("rival", status.size))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await trio.sleep(0.2)
        # Well past the lease's lifetime the first request still holds it (renewed), so
        # the second waits and then appends after it, never in between.
        nursery.start_soon(second)
    assert finished == [("slow", 12), ("rival", 13)]
    data = await storage.get_content(layout.upload_data("repo", session.id))
    assert data == b"a" * 12 + b"b"


async def test_a_chunk_at_the_wrong_offset_fails_at_once(
    storage: StorageDriver, metadata: MetadataStore
) -> None:
    uploads = Uploads(storage, metadata)
    session = await uploads.start("repo")
    await uploads.append("repo", session.id, chunks([b"abc"]))
    with trio.fail_after(2):
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

    async def writer(self, path: str, *, offset: int = 0) -> object:
        inner = await self._inner.writer(path, offset=offset)
        budget = self._budget

        class Writer:
            size = property(lambda _self: inner.size)

            async def write(self, data: bytes) -> None:
                nonlocal budget
                if len(data) > budget:
                    raise StorageError("No space left on device")
                budget -= len(data)
                await inner.write(data)

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
