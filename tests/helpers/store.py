"""Below the HTTP API: a metadata store to test against, and a straight look at a
registry's storage root (regd's data directory or Distribution's root), at what is really
on disk."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from regd.clock import SYSTEM_CLOCK, Clock
from regd.metadata import MetadataStore, NewManifest, sqlite_url


@contextlib.asynccontextmanager
async def metadata_store(
    database_url: str | None, tmp_path: Path, *, clock: Clock = SYSTEM_CLOCK
) -> AsyncIterator[MetadataStore]:
    """A store with its schema on `database_url` (the `database_url` fixture: None for
    SQLite in `tmp_path`), closed afterwards."""
    store = MetadataStore(database_url or sqlite_url(tmp_path / "m.db"), clock=clock)
    store.create_schema()
    try:
        yield store
    finally:
        await store.aclose()


def new_manifest(
    payload: bytes,
    media_type: str = "application/vnd.oci.image.manifest.v1+json",
    blobs: Sequence[str] = (),
    children: Sequence[str] = (),
) -> NewManifest:
    """A manifest's rows as the registry layer would hand them to the store: for seeding a
    store straight through the metadata layer (many rows fast, no blob bytes)."""
    return NewManifest(
        digest="sha256:" + hashlib.sha256(payload).hexdigest(),
        media_type=media_type,
        size=len(payload),
        payload=payload,
        artifact_type=None,
        subject=None,
        annotations={},
        blobs=blobs,
        children=children,
    )


def blob_files(root: Path) -> list[Path]:
    """Every `blobs/<alg>/<xx>/<hex>/data` below `root`, wherever the layout starts."""
    return sorted(p for p in root.rglob("data") if p.parent.parent.parent.parent.name == "blobs")


def check_blob_store(root: Path) -> int:
    """Fail if any stored blob's bytes do not hash to the digest it is stored under; return
    how many blobs were checked."""
    files = blob_files(root)
    for path in files:
        algorithm = path.parent.parent.parent.name
        expected = path.parent.name
        h = hashlib.new(algorithm)
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        assert h.hexdigest() == expected, f"{path} does not hash to the digest it is stored under"
    return len(files)


def copies_of(root: Path, data: bytes) -> list[Path]:
    """Files anywhere under `root` holding exactly `data` (the blob, leftover uploads, ...)."""
    digest = hashlib.sha256(data).digest()
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.stat().st_size == len(data)
        and hashlib.sha256(path.read_bytes()).digest() == digest
    )
