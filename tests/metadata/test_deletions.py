"""Deleting a manifest or a repository takes every row that depends on it, on both
backends: the schema's ON DELETE CASCADE does it, so SQLite must enforce foreign keys on
every connection the store opens."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, func, select

from regd.metadata import MetadataStore, NewManifest, collection
from regd.metadata import schema as t

BLOB = "sha256:" + "1" * 64
CHILD = "sha256:" + "c" * 64
INDEX = "sha256:" + "d" * 64


def manifest(digest: str, *, blobs: list[str], children: list[str]) -> NewManifest:
    return NewManifest(
        digest=digest,
        media_type="application/vnd.oci.image.index.v1+json",
        size=2,
        payload=b"{}",
        artifact_type=None,
        subject=None,
        annotations={},
        blobs=blobs,
        children=children,
    )


async def push_index(store: MetadataStore, repository: str = "r") -> None:
    """An index (INDEX) with a blob and a child manifest (CHILD), each tagged."""
    await store.link_blob(repository, BLOB, 1)
    await store.put_manifest(repository, manifest(CHILD, blobs=[BLOB], children=[]), ["child"])
    await store.put_manifest(
        repository, manifest(INDEX, blobs=[BLOB], children=[CHILD]), ["a", "b"]
    )


async def count_rows(store: MetadataStore) -> dict[str, int]:
    tables = (
        t.repositories,
        t.repository_blobs,
        t.manifests,
        t.manifest_blobs,
        t.manifest_children,
        t.tags,
    )

    def q(conn: Connection) -> dict[str, int]:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in tables
        }

    return await store.run_read(q)


BEFORE = {
    "repositories": 1,
    "repository_blobs": 1,
    "manifests": 2,
    "manifest_blobs": 2,
    "manifest_children": 1,
    "tags": 3,
}
# The child manifest and its tag stay; the index's tags and references are gone.
WITHOUT_INDEX = {**BEFORE, "manifests": 1, "manifest_blobs": 1, "manifest_children": 0, "tags": 1}


async def test_deleting_a_manifest_deletes_its_tags_and_references(store: MetadataStore) -> None:
    await push_index(store)
    assert await count_rows(store) == BEFORE
    assert await store.delete_manifest("r", INDEX)
    assert await count_rows(store) == WITHOUT_INDEX
    assert await store.get_manifest("r", tag="a") is None
    assert await store.get_manifest("r", tag="child") is not None


async def test_collecting_a_manifest_deletes_its_tags_and_references(
    store: MetadataStore,
) -> None:
    await push_index(store)
    (repository_id,) = (await collection.snapshot(store)).repositories

    def the_index(graph: collection.RepositoryGraph) -> list[int]:
        return [m.id for m in graph.manifests.values() if m.digest == INDEX]

    deleted = await collection.delete_manifests(store, repository_id, the_index)
    assert [m.digest for m in deleted] == [INDEX]
    assert await count_rows(store) == WITHOUT_INDEX


async def test_deleting_a_repository_leaves_nothing_of_it(store: MetadataStore) -> None:
    await push_index(store)
    await push_index(store, "other")
    assert await store.delete_repository("r") == (2, 3)
    assert await count_rows(store) == BEFORE
    assert await store.delete_repository("r") is None
    # The blob itself stays for the collector to judge.
    assert await store.global_blob_size(BLOB) == 1


@pytest.mark.parametrize("database_url", [None])
async def test_every_sqlite_connection_enforces_foreign_keys(store: MetadataStore) -> None:
    def enforced(conn: Connection) -> bool:
        return bool(conn.exec_driver_sql("PRAGMA foreign_keys").scalar())

    # A point read (on the loop's thread), a read in a worker thread, and the writer's.
    assert await store.run_query(enforced)
    assert await store.run_read(enforced)
    assert await store.run_write(enforced)
