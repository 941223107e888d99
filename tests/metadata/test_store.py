"""The metadata conformance suite: every backend (SQLite, PostgreSQL) passes it.

The `store` fixture (conftest.py) runs each test on both, on a clock the test advances;
the suite talks to the store's public methods, and reads rows only to see what a deletion
left behind.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from regd.clock import ManualClock
from regd.metadata import (
    MetadataError,
    MetadataStore,
    MissingReferences,
    NewManifest,
    collection,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
M1 = "sha256:" + "a" * 64
M2 = "sha256:" + "b" * 64


def manifest(
    digest: str, blobs: list[str], children: Sequence[str] = (), subject: str | None = None
) -> NewManifest:
    return NewManifest(
        digest=digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=10,
        payload=b"0123456789",
        artifact_type="application/x-test",
        subject=subject,
        annotations={"k": "v"},
        blobs=blobs,
        children=list(children),
    )


async def test_blob_links(store: MetadataStore) -> None:
    assert await store.blob_size("r", D1) is None
    await store.link_blob("r", D1, 5)
    await store.link_blob("r", D1, 5)
    assert await store.blob_size("r", D1) == 5
    assert await store.blob_size("other", D1) is None
    assert await store.global_blob_size(D1) == 5
    assert await store.repository_exists("r")
    assert await store.unlink_blob("r", D1)
    assert not await store.unlink_blob("r", D1)
    assert not await store.unlink_blob("nope", D1)
    assert await store.global_blob_size(D1) == 5


async def test_uploads_and_leases(store: MetadataStore, clock: ManualClock) -> None:
    uid = "00000000-0000-4000-8000-000000000001"
    await store.create_upload(uid, "r")
    info = await store.get_upload(uid)
    assert info is not None
    assert (info.repository, info.size) == ("r", 0)
    held = await store.acquire_upload(uid, "lease-1", expected_size=0, ttl=60)
    assert held is not None
    # Held: nobody else gets it.
    assert await store.acquire_upload(uid, "lease-2", expected_size=0, ttl=60) is None
    assert not await store.release_upload(uid, "lease-2", 99)
    assert await store.release_upload(uid, "lease-1", 7)
    # Wrong expected size.
    assert await store.acquire_upload(uid, "lease-3", expected_size=0, ttl=60) is None
    assert await store.acquire_upload(uid, "lease-3", expected_size=7, ttl=0) is not None
    # An expired lease can be taken over.
    clock.advance(0.01)
    assert await store.acquire_upload(uid, "lease-4", expected_size=None, ttl=60) is not None
    assert await store.delete_upload(uid)
    assert await store.get_upload(uid) is None
    assert not await store.delete_upload(uid)


async def test_linking_a_blob_can_finish_an_upload(store: MetadataStore) -> None:
    uid = "00000000-0000-4000-8000-000000000002"
    await store.create_upload(uid, "r")
    await store.link_blob("r", D1, 1, upload_id=uid)
    assert await store.get_upload(uid) is None


async def test_manifest_requires_references(store: MetadataStore) -> None:
    await store.link_blob("r", D1, 1)
    with pytest.raises(MissingReferences) as info:
        await store.put_manifest("r", manifest(M1, [D1, D2]), ["t"])
    assert info.value.blobs == [D2]
    assert await store.get_manifest("r", digest=M1) is None
    assert await store.list_tags("r", None, None) is not None
    await store.link_blob("r", D2, 2)
    await store.put_manifest("r", manifest(M1, [D1, D2, D1]), ["t", "u"])
    got = await store.get_manifest("r", tag="t")
    assert got is not None
    assert got.digest == M1
    assert got.payload == b"0123456789"
    assert got.annotations == {"k": "v"}
    head = await store.get_manifest("r", digest=M1, with_payload=False)
    assert head is not None
    assert head.payload is None
    with pytest.raises(MissingReferences) as info:
        await store.put_manifest("r", manifest(M2, [], children=[M1, D3]), [])
    assert info.value.manifests == [D3]


async def test_put_manifest_is_idempotent_and_moves_tags(store: MetadataStore) -> None:
    await store.link_blob("r", D1, 1)
    await store.put_manifest("r", manifest(M1, [D1]), ["t"])
    await store.put_manifest("r", manifest(M1, [D1]), ["t"])
    await store.put_manifest("r", manifest(M2, [D1]), ["t"])
    got = await store.get_manifest("r", tag="t")
    assert got is not None
    assert got.digest == M2
    details = await store.tag_details("r")
    assert details is not None
    assert [(d.name, d.digest) for d in details] == [("t", M2)]


async def test_deletes(store: MetadataStore) -> None:
    await store.link_blob("r", D1, 1)
    await store.put_manifest("r", manifest(M1, [D1]), ["a", "b"])
    assert await store.delete_tag("r", "a")
    assert not await store.delete_tag("r", "a")
    assert await store.delete_manifest("r", M1)
    assert not await store.delete_manifest("r", M1)
    page = await store.list_tags("r", None, None)
    assert page is not None
    assert page.items == []
    assert not await store.delete_manifest("nope", M1)


async def test_paging(store: MetadataStore) -> None:
    names = [f"repo{i:02d}" for i in range(25)]
    for n in reversed(names):
        await store.link_blob(n, D1, 1)
    page = await store.list_repositories(None, 10)
    assert page.items == names[:10]
    assert page.more
    page = await store.list_repositories(names[19], 10)
    assert page.items == names[20:]
    assert not page.more
    assert (await store.list_repositories(None, None)).items == names
    assert await store.list_tags("missing", None, None) is None


async def test_referrers(store: MetadataStore) -> None:
    await store.link_blob("r", D1, 1)
    await store.put_manifest("r", manifest(M1, [D1], subject=M2), [])
    rows = await store.referrers("r", M2, None)
    assert [r.digest for r in rows] == [M1]
    assert await store.referrers("r", M2, "application/x-other") == []
    assert await store.referrers("other", M2, None) == []


async def test_concurrent_writers(store: MetadataStore) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(store.link_blob, f"repo{i % 3}", D1, 1)
    assert await store.global_blob_size(D1) == 1


def test_bad_urls() -> None:
    with pytest.raises(MetadataError):
        MetadataStore("mysql://x")


async def test_an_upload_taken_with_a_lease(store: MetadataStore) -> None:
    uid = "00000000-0000-4000-8000-000000000003"
    await store.create_upload(uid, "r")

    async def take(lease: str, holder: str, size: int, room: int) -> tuple[bool, bool]:
        info, taken = await store.acquire_upload_and_lock(
            uid,
            lease,
            expected_size=size,
            ttl=60,
            repository="r",
            lock="blob:x",
            holder=holder,
            lock_ttl=60,
            if_size_at_most=room,
        )
        return info is not None, taken

    assert await take("lease-1", "h1", 0, 10) == (True, True)
    assert not await store.acquire_lock("blob:x", "other", 60)
    # A held session: neither lease is taken.
    assert await take("lease-2", "h2", 0, 10) == (False, False)
    # Both given back in one go.
    assert await store.release_upload(uid, "lease-1", 20, release_lock=("blob:x", "h1"))
    # A session holding more than `room` bytes gets only its own lease.
    assert await take("lease-3", "h3", 20, 10) == (True, False)
    assert await store.acquire_lock("blob:x", "other", 60)
    assert await store.release_upload(uid, "lease-3", 20)
    # A busy named lease is not waited for: the session's lease is taken all the same.
    assert await take("lease-4", "h4", 20, 100) == (True, False)
    assert await take("lease-5", "h5", 20, 100) == (False, False)


async def test_mounts(store: MetadataStore, clock: ManualClock) -> None:
    async def linked_at() -> float:
        return (await collection.snapshot(store)).blobs[D1][1]

    await store.link_blob("src", D1, 5)
    before = await linked_at()
    clock.advance(0.01)
    # Not in the named repository, or not stored at all: nothing happens.
    assert await store.mount_blob("dst", D1, "other") is None
    assert await store.mount_blob("dst", D1, "dst") is None
    assert await store.mount_blob("dst", D2, None) is None
    assert await store.mount_blob("dst", D2, "src") is None
    assert await linked_at() == before
    assert not await store.repository_exists("dst")
    assert await store.mount_blob("dst", D1, "src") == 5
    assert await store.blob_size("dst", D1) == 5
    assert await linked_at() > before
    # Automatic mounts take a blob from anywhere; mounting twice is harmless.
    assert await store.mount_blob("auto", D1, None) == 5
    assert await store.mount_blob("auto", D1, None) == 5
    assert await store.blob_size("auto", D1) == 5


async def test_a_lease_is_extended_by_its_holder_only(
    store: MetadataStore, clock: ManualClock
) -> None:
    assert await store.acquire_lock("gc", "sweeper", 30)
    assert not await store.acquire_lock("gc", "intruder", 60)
    # The holder renews before it runs out...
    clock.advance(20)
    assert await store.acquire_lock("gc", "sweeper", 30)
    # ...so past the first lifetime it is still held.
    clock.advance(20)
    assert not await store.acquire_lock("gc", "intruder", 60)
    # Not renewed, it lapses and anyone may take it.
    clock.advance(35)
    assert await store.acquire_lock("gc", "intruder", 60)
    assert not await store.acquire_lock("gc", "sweeper", 60)


async def test_an_upload_lease_lasts_as_long_as_it_is_renewed(
    store: MetadataStore, clock: ManualClock
) -> None:
    uid = "00000000-0000-4000-8000-000000000004"
    await store.create_upload(uid, "r")
    assert await store.acquire_upload(uid, "lease-1", expected_size=0, ttl=10) is not None
    clock.advance(8)
    assert await store.renew_upload(uid, "lease-1", 10)
    clock.advance(8)
    assert await store.acquire_upload(uid, "lease-2", expected_size=None, ttl=10) is None
    clock.advance(3)
    assert await store.acquire_upload(uid, "lease-2", expected_size=None, ttl=10) is not None
    # Taken over: the first holder's renewal fails.
    assert not await store.renew_upload(uid, "lease-1", 10)


async def test_close_lets_go_of_the_database(store: MetadataStore) -> None:
    await store.link_blob("r", "sha256:" + "1" * 64, 1)
    assert await store.acquire_lock("x", "me", 60)
    store.close()
    if store.dialect == "sqlite":
        # The write-ahead log is folded in and removed when the last connection closes.
        database = store.engine.url.database
        assert database is not None
        assert not await trio.Path(database + "-wal").exists()
        return
    others = create_engine(store.url, poolclass=NullPool)
    try:
        with others.connect() as conn:
            count = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        others.dispose()
    assert count == 0
