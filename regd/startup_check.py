"""A warning at start-up when the database is empty but the storage holds blobs.

That is how a registry:2 root looks before `regctl import-registry2` adopts it, so regd
serves on; but it is also how a lost or replaced database looks, and then the catalog
is empty beside a full blob store. One line at start-up tells the operator which.
"""

from __future__ import annotations

import logging

import trio

from regd.config import Config
from regd.errors import BackendError
from regd.metadata import MetadataStore
from regd.metadata.census import knows_no_blob
from regd.storage import FilesystemDriver, PathNotFound, StorageDriver, layout

log = logging.getLogger("regd.server")


async def first_stored_blob(storage: StorageDriver) -> str | None:
    """The path of some blob directory in the storage, or None; stops at the first."""
    root = layout.blobs_root()
    try:
        algorithms = await storage.list(root)
    except PathNotFound:
        return None
    for algorithm in algorithms:
        try:
            prefixes = await storage.list(f"{root}/{algorithm}")
        except PathNotFound:
            continue
        for prefix in prefixes:
            try:
                blobs = await storage.list(f"{root}/{algorithm}/{prefix}")
            except PathNotFound:
                continue
            if blobs:
                return f"{root}/{algorithm}/{prefix}/{blobs[0]}"
    return None


async def _check(config: Config) -> None:
    if config.storage != "filesystem":
        return
    store = MetadataStore(config.database_url, max_threads=1)
    try:
        if not await knows_no_blob(store):
            return
        blob = await first_stored_blob(FilesystemDriver(config.blob_root))
    except BackendError as exc:
        # Only advice: serving goes on, and the same failure will show where it matters.
        log.warning("could not compare the database with the storage: %s", exc)
        return
    finally:
        await store.aclose()
    if blob is not None:
        log.warning(
            "the database knows no blob but the storage at %s holds blobs (%s): to adopt a "
            "registry:2 root run `regctl import-registry2 %s`; if regd's database was lost, "
            "restore it from a backup (`regctl verify` lists the blobs it does not know)",
            config.blob_root,
            blob,
            config.blob_root,
        )


def warn_if_metadata_lost(config: Config) -> None:
    trio.run(_check, config)
