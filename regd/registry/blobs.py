"""Reading, mounting and unlinking blobs of a repository."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from regd.errors import BlobUnknown, NameInvalid
from regd.metadata import MetadataStore, Origin, Target
from regd.metadata.outbox import BLOB_MEDIA_TYPE
from regd.metadata.rules import BATCH_SIZE
from regd.mirror import LiveBlob, Mirrors, Route
from regd.oci.digest import Digest
from regd.registry import validation
from regd.storage import FileBacked, PathNotFound, Reader, StorageDriver, layout

READ_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BlobStat:
    digest: Digest
    size: int
    # A mirrored repository's blob that is still only upstream: its route.
    upstream: Route | None = None


class BlobStream:
    """An open blob: iterate it for bytes in [offset, offset+length)."""

    def __init__(self, reader: Reader, length: int) -> None:
        self._reader = reader
        self.length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        remaining = self.length
        try:
            while remaining > 0:
                chunk = await self._reader.read(min(READ_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            await self._reader.aclose()

    async def aclose(self) -> None:
        await self._reader.aclose()

    def file_span(self) -> tuple[int, int, int] | None:
        """Where the bytes lie when the storage reads a local file, so the server can hand
        them to the socket without reading them (sendfile)."""
        if not isinstance(self._reader, FileBacked):
            return None
        fd, position = self._reader.file_position()
        return fd, position, self.length


class Blobs:
    def __init__(
        self, storage: StorageDriver, metadata: MetadataStore, mirrors: Mirrors | None = None
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._mirrors = mirrors

    async def stat(self, repository: str, digest: str) -> BlobStat:
        name = validation.repository_name(repository)
        d = validation.digest(digest)
        size = await self._metadata.blob_size(name, str(d))
        route = self._mirrors.find(name) if self._mirrors is not None else None
        if route is not None and self._mirrors is not None:
            # The miss hook: the mirror links the blob from its cache or finds it upstream.
            if size is not None:
                await self._mirrors.note_pull(route, str(d))
                return BlobStat(d, size)
            size, stored = await self._mirrors.blob_size(route, d)
            return BlobStat(d, size, None if stored else route)
        if size is None:
            raise BlobUnknown(f"blob {d} is not in repository {name}", {"digest": str(d)})
        return BlobStat(d, size)

    async def open(
        self, blob: BlobStat, offset: int, length: int, origin: Origin | None = None
    ) -> BlobStream | LiveBlob:
        """The blob's bytes; a mirror's fill this starts is reported as `origin`'s."""
        if blob.upstream is not None and self._mirrors is not None:
            live = await self._mirrors.open_blob(
                blob.upstream, blob.digest, blob.size, offset, length, origin
            )
            if live is not None:
                return live
        return await self.open_stored(blob.digest, offset, length)

    async def open_stored(self, digest: Digest, offset: int, length: int) -> BlobStream:
        try:
            reader = await self._storage.reader(layout.blob_data(digest), offset)
        except PathNotFound:
            # The rows say it exists but the bytes are gone: report it as missing
            # rather than failing; `regctl verify` finds such damage.
            raise BlobUnknown(
                f"blob {digest} is recorded but its content is missing",
                {"digest": str(digest)},
            ) from None
        return BlobStream(reader, length)

    def note_pull(self, repository: str, blob: BlobStat, origin: Origin) -> None:
        """Report a blob served (best effort: see regd.metadata.outbox)."""
        target = Target(repository, str(blob.digest), BLOB_MEDIA_TYPE, blob.size, kind="blobs")
        self._metadata.note_pull(target, origin)

    async def redirect_url(self, blob: BlobStat) -> str | None:
        if blob.upstream is not None:
            return None
        return await self._storage.redirect_url(layout.blob_data(blob.digest))

    async def delete(self, repository: str, digest: str, *, origin: Origin | None = None) -> None:
        """Unlink the blob from the repository; its bytes go at the next collection."""
        name = validation.repository_name(repository)
        d = validation.digest(digest)
        if not await self._metadata.unlink_blob(name, str(d), origin=origin):
            raise BlobUnknown(f"blob {d} is not in repository {name}", {"digest": str(d)})

    async def mount(
        self,
        repository: str,
        digest: str,
        source: str | None,
        may_pull: Callable[[str], bool] | None = None,
        *,
        origin: Origin | None = None,
    ) -> BlobStat | None:
        """Make a stored blob available in `repository` without moving bytes.

        With `source`, only a blob that repository holds is mounted; without it, any
        blob the registry stores (automatic mount). None when nothing can be mounted.
        `may_pull` (None: everyone may read everything) limits both to repositories the
        caller may pull, so a mount never tells anyone that a digest exists elsewhere.
        """
        name = validation.repository_name(repository)
        d = validation.digest(digest)
        if self._mirrors is not None:
            self._mirrors.routes.refuse_push(name)
        if source is not None:
            try:
                source = validation.repository_name(source)
            except NameInvalid:
                return None
            if may_pull is not None and not may_pull(source):
                return None
        elif may_pull is not None:
            source = await self._readable_source(str(d), may_pull)
            if source is None:
                return None
        size = await self._metadata.mount_blob(name, str(d), source, origin=origin)
        if size is None:
            return None
        return BlobStat(d, size)

    async def _readable_source(self, digest: str, may_pull: Callable[[str], bool]) -> str | None:
        after: str | None = None
        while True:
            page = await self._metadata.blob_repositories(digest, after, BATCH_SIZE)
            for candidate in page.items:
                if may_pull(candidate):
                    return candidate
            if not page.more or not page.items:
                return None
            after = page.items[-1]
