"""Hashing a file that is already in storage, in bounded pieces."""

from __future__ import annotations

import trio

from regd.oci.digest import Hasher
from regd.storage import StorageDriver, Writer

# Large enough that handing each piece to a worker thread costs little (hashlib releases
# the GIL), small enough to bound memory per file.
HASH_CHUNK = 4 * 1024 * 1024


async def hash_stored(
    storage: StorageDriver,
    path: str,
    algorithm: str,
    *,
    copy_to: Writer | None = None,
) -> Hasher:
    """Hash the file at `path`; `copy_to` receives the same bytes on the way, so a copy
    is verified in one read. Raises PathNotFound when there is no such file."""
    hasher = Hasher(algorithm)
    reader = await storage.reader(path)
    try:
        while chunk := await reader.read(HASH_CHUNK):
            await trio.to_thread.run_sync(hasher.update, chunk)
            if copy_to is not None:
                await copy_to.write(chunk)
    finally:
        await reader.aclose()
    return hasher
