"""Group commit on SQLite: writes that share a commit still succeed or fail one by one."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from regd.metadata import MetadataStore, MissingReferences, NewManifest, sqlite_url


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
