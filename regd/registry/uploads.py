"""Blob upload sessions: monolithic, streamed and chunked pushes.

The session's truth is its metadata row (repository, bytes accepted). The bytes live in
`_uploads/<id>/data`. A request that appends takes the row's lease first, so two replicas
never interleave writes to one session; a request that fails or is cut off rolls the file
back to the accepted size, leaving the session usable.

Hashing: the session's running sha256 is saved with its row after every chunk (in the
transaction that records the new size), so the next chunk continues it on any replica
without reading back what the session holds, and no process keeps anything in memory.
Only a session without a usable saved state (another digest algorithm, a platform
without libcrypto) is hashed again from storage when it completes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from regd.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    ConfigError,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
    TooManyRequests,
)
from regd.metadata import MetadataStore, Origin, UploadInfo
from regd.metadata.hashstates import HashState
from regd.metadata.rules import blob_lease
from regd.oci.digest import Digest, Hasher
from regd.registry import validation
from regd.registry.blobs import BlobStat
from regd.registry.hashing import (
    STATE_KIND,
    ResumableSha256,
    StateInvalid,
    hash_stored,
    resumable,
)
from regd.registry.leases import BLOB_LEASE_SECONDS, HeldLease, Leases
from regd.registry.quotas import Quotas
from regd.registry.streaming import WRITE_CHUNK, pump, receive_small
from regd.registry.tasks import task_group
from regd.storage import InvalidOffset, PathNotFound, StorageDriver, Writer, layout

# A request appending to a session renews its lease every third of this; after a crash
# the session is free again within this long.
LEASE_SECONDS = 10.0
# Open sessions one repository may have: each is a row and possibly a file until it is
# completed, cancelled or purged as stale, so a client must not open them without bound.
MAX_UPLOADS_PER_REPOSITORY = 1000


@dataclass(frozen=True, slots=True)
class UploadStatus:
    id: str
    repository: str
    size: int


@dataclass(frozen=True, slots=True)
class _Claim:
    """A session this request holds the write lease `lease` on; `info` as it was taken."""

    info: UploadInfo
    lease: str

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def repository(self) -> str:
        return self.info.repository

    @property
    def size(self) -> int:
        return self.info.size


class Uploads:
    def __init__(
        self,
        storage: StorageDriver,
        metadata: MetadataStore,
        *,
        lease_seconds: float = LEASE_SECONDS,
        blob_lease_seconds: float = BLOB_LEASE_SECONDS,
        max_uploads_per_repository: int = MAX_UPLOADS_PER_REPOSITORY,
        refuse_push: Callable[[str], None] | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        if max_uploads_per_repository < 1:
            raise ConfigError(
                f"max_uploads_per_repository must be at least 1, not {max_uploads_per_repository}"
            )
        self._storage = storage
        self._metadata = metadata
        self._lease_seconds = lease_seconds
        self._blob_lease_seconds = blob_lease_seconds
        self._max_uploads = max_uploads_per_repository
        self._locks = Leases(metadata)
        # Raises for repositories that take no pushes (a mirror's).
        self._refuse_push = refuse_push
        self._quotas = quotas or Quotas(metadata)

    # -- sessions ------------------------------------------------------------------------

    async def start(self, repository: str) -> UploadStatus:
        name = validation.repository_name(repository)
        if self._refuse_push is not None:
            self._refuse_push(name)
        upload_id = str(uuid.uuid4())
        limit = self._max_uploads
        if await self._metadata.create_upload_within(upload_id, name, limit) >= limit:
            # A soft cap: replicas creating sessions at the same moment may overshoot it
            # by a few (see MetadataStore.create_upload_within).
            raise TooManyRequests(
                f"repository {name} has {limit} upload sessions open, the most allowed; "
                "complete or cancel one, or retry later",
                {"repository": name, "limit": limit},
            )
        return UploadStatus(upload_id, name, 0)

    async def _session(self, repository: str, upload_id: str) -> UploadInfo:
        name = validation.repository_name(repository)
        info = await self._metadata.get_upload(upload_id) if _is_uuid(upload_id) else None
        if info is None or info.repository != name:
            raise BlobUploadUnknown(
                f"upload {upload_id[:64]} is not in progress for {name}",
                {"upload": upload_id[:64]},
            )
        return info

    async def status(self, repository: str, upload_id: str) -> UploadStatus:
        info = await self._session(repository, upload_id)
        return UploadStatus(info.id, info.repository, info.size)

    async def cancel(self, repository: str, upload_id: str) -> None:
        info = await self._session(repository, upload_id)
        await self._metadata.delete_upload(info.id)
        await self._remove_files(info.repository, info.id)

    async def _remove_files(self, repository: str, upload_id: str) -> None:
        with contextlib.suppress(PathNotFound):
            await self._storage.delete(layout.upload_dir(repository, upload_id))

    # -- appending -----------------------------------------------------------------------

    async def append(
        self,
        repository: str,
        upload_id: str,
        body: AsyncIterable[bytes],
        *,
        start: int | None = None,
        length: int | None = None,
    ) -> UploadStatus:
        """Append a chunk. `start` (from Content-Range) must equal the accepted size."""
        claim, _ = await self._acquire(repository, upload_id, start)
        try:
            if length is not None:
                await self._quotas.check_blob(claim.repository, claim.size + length)
            size, hasher = await self._append_locked(claim, body, length)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._metadata.release_upload(claim.id, claim.lease, claim.size)
            raise
        if isinstance(hasher, ResumableSha256):
            state = HashState(hasher.algorithm, STATE_KIND, size, hasher.export())
            await self._metadata.release_upload_hashed(claim.id, claim.lease, size, state)
        else:
            await self._metadata.release_upload(claim.id, claim.lease, size)
        return UploadStatus(claim.id, claim.repository, size)

    async def _acquire(
        self,
        repository: str,
        upload_id: str,
        start: int | None,
        *,
        blob: str | None = None,
        room: int = 0,
    ) -> tuple[_Claim, HeldLease | None]:
        """Take the session's write lease, and the lease named `blob` along with it when
        that is free and the session holds at most `room` bytes.

        A lease held by another request is waited for: it is either released soon (that
        request ends) or expires (its process died), in at most one lease period, since
        live holders renew it. A chunk that does not continue the session fails at once.
        A busy `blob` lease is not waited for here.
        """
        name = validation.repository_name(repository)
        if not _is_uuid(upload_id):
            raise BlobUploadUnknown(
                f"upload {upload_id[:64]} is not in progress for {name}",
                {"upload": upload_id[:64]},
            )
        lease = str(uuid.uuid4())
        delay = 0.05
        deadline = trio.current_time() + self._lease_seconds + 1
        while True:
            # The common case is one transaction: the session exists and is free.
            wanted = None
            if blob is None:
                held = await self._metadata.acquire_upload(
                    upload_id, lease, expected_size=start, ttl=self._lease_seconds, repository=name
                )
            else:
                wanted = HeldLease(
                    blob, str(uuid.uuid4()), self._blob_lease_seconds, trio.current_time()
                )
                held, taken = await self._metadata.acquire_upload_and_lock(
                    upload_id,
                    lease,
                    expected_size=start,
                    ttl=self._lease_seconds,
                    repository=name,
                    lock=wanted.name,
                    holder=wanted.holder,
                    lock_ttl=wanted.ttl,
                    if_size_at_most=room,
                )
                wanted = wanted if taken else None
            if held is not None:
                return _Claim(held, lease), wanted
            current = await self._metadata.get_upload(upload_id)
            if current is None or current.repository != name:
                raise BlobUploadUnknown(
                    f"upload {upload_id[:64]} is not in progress for {name}",
                    {"upload": upload_id[:64]},
                )
            if start is not None and start != current.size:
                raise RangeInvalid(
                    f"chunk starts at byte {start} but the upload holds {current.size} bytes",
                    current.size,
                )
            if trio.current_time() >= deadline:
                raise RangeInvalid(
                    f"upload {upload_id} is being written by another request; retry later",
                    current.size,
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _open_writer(self, info: UploadInfo) -> Writer:
        path = layout.upload_data(info.repository, info.id)
        try:
            return await self._storage.writer(path, offset=info.size)
        except (InvalidOffset, PathNotFound):
            # Fewer bytes on storage than the session accepted: the data is damaged.
            await self._metadata.delete_upload(info.id)
            await self._remove_files(info.repository, info.id)
            raise BlobUploadInvalid(f"upload {info.id} lost its data; start a new upload") from None

    async def _saved_hasher(self, info: UploadInfo) -> Hasher | None:
        """The session's running hash as saved with it, or None when there is none usable
        (the bytes are then hashed from storage when the upload completes)."""
        if info.size == 0:
            return resumable("sha256")
        saved = await self._metadata.get_hash_state(info.id)
        if saved is None or saved.kind != STATE_KIND or saved.size != info.size:
            return None
        if not ResumableSha256.available():
            return None
        try:
            return ResumableSha256.restore(saved.state, saved.size)
        except StateInvalid:
            return None

    async def _append_locked(
        self, claim: _Claim, body: AsyncIterable[bytes], length: int | None
    ) -> tuple[int, Hasher | None]:
        info = claim.info
        hasher = await self._saved_hasher(info)
        writer = await self._open_writer(info)
        try:
            async with task_group() as nursery:
                nursery.start_soon(self._keep_lease, claim)
                received = await pump(body, writer, hasher, length)
                nursery.cancel_scope.cancel()
        except BaseException:
            await writer.cancel()
            raise
        if length is not None and received != length:
            await writer.cancel()
            raise SizeInvalid(
                f"received {received} bytes but the request announced {length}",
                {"received": received, "expected": length},
            )
        await writer.commit()
        return writer.size, hasher

    async def _keep_lease(self, claim: _Claim) -> None:
        """Renew the lease while this request needs it (a long body, a wait), so that no
        one else takes it over."""
        while True:
            await trio.sleep(self._lease_seconds / 3)
            if not await self._metadata.renew_upload(claim.id, claim.lease, self._lease_seconds):
                raise BlobUploadInvalid(
                    f"upload {claim.id} was taken over by another request; start again"
                )

    # -- completing ----------------------------------------------------------------------
    # Three ways to a stored blob, one per shape of request; all end in _place.

    async def finish(
        self,
        repository: str,
        upload_id: str,
        digest: str | None,
        body: AsyncIterable[bytes],
        *,
        start: int | None = None,
        length: int | None = None,
        origin: Origin | None = None,
    ) -> BlobStat:
        """Append a final chunk (possibly empty), verify the digest and store the blob."""
        if digest is None:
            # An unknown session is the more useful answer than a missing digest.
            await self._session(repository, upload_id)
            raise DigestInvalid("completing an upload needs ?digest=")
        expected = validation.digest(digest)
        if length is not None and length <= WRITE_CHUNK:
            # A small session with a small last chunk is received, hashed and stored in
            # moments: the blob's lease is taken in the transaction that takes the
            # session's, rather than in one of its own before the file is moved. A long
            # body must not hold the blob's lease while it streams.
            claim, held = await self._acquire(
                repository,
                upload_id,
                start,
                blob=blob_lease(str(expected)),
                room=WRITE_CHUNK - length,
            )
        else:
            claim, held = await self._acquire(repository, upload_id, start)
        try:
            # With no Content-Length, what the session holds is all that is known yet.
            await self._quotas.check_blob(
                claim.repository, claim.size + (length or 0), str(expected)
            )
            if claim.size == 0 and length is not None and length <= WRITE_CHUNK:
                return await self._store_whole(
                    claim.repository, expected, body, length, claim=claim, held=held, origin=origin
                )
            if claim.size == 0:
                # The whole blob in the PUT of an empty session: its digest is known before
                # the first byte, so it goes straight to its place like a monolithic POST.
                return await self._store_streamed(
                    claim.repository, expected, body, length, origin, claim=claim
                )
            return await self._store_session_file(
                claim, expected, body, length, held=held, origin=origin
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                # Whatever stayed in the session (it may already be gone) is released, and
                # the blob's lease taken with it; giving back a lease no longer ours is a
                # no-op, so this is safe after _place gave it back itself.
                await self._metadata.release_upload(
                    claim.id,
                    claim.lease,
                    claim.size,
                    release_lock=(held.name, held.holder) if held else None,
                )
            raise

    async def monolithic(
        self,
        repository: str,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        *,
        origin: Origin | None = None,
    ) -> BlobStat:
        """POST with ?digest=: the whole blob in one request, no session row."""
        name = validation.repository_name(repository)
        if self._refuse_push is not None:
            self._refuse_push(name)
        return await self.store(name, digest, body, length, origin=origin)

    async def store(
        self,
        repository: str,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        *,
        origin: Origin | None = None,
    ) -> BlobStat:
        """A whole blob into storage, hashed on the way and linked once verified; what a
        monolithic push and a mirror's fill share."""
        name = validation.repository_name(repository)
        expected = validation.digest(digest)
        if length is not None:
            await self._quotas.check_blob(name, length, str(expected))
        if length is not None and length <= WRITE_CHUNK:
            return await self._store_whole(name, expected, body, length, origin=origin)
        return await self._store_streamed(name, expected, body, length, origin)

    async def _store_whole(
        self,
        repository: str,
        expected: Digest,
        body: AsyncIterable[bytes],
        length: int,
        *,
        claim: _Claim | None = None,
        held: HeldLease | None = None,
        origin: Origin | None = None,
    ) -> BlobStat:
        """A small blob whole in one request (a POST, or the PUT of a fresh session) is
        checked in memory and written to its place in one step, without a session file."""
        data = await receive_small(body, length)
        await self._verify(Digest.of(data, expected.algorithm), expected, claim)
        await self._place(
            repository,
            expected,
            len(data),
            self._writing(expected, data),
            claim=claim,
            held=held,
            origin=origin,
        )
        return BlobStat(expected, len(data))

    async def _store_session_file(
        self,
        claim: _Claim,
        expected: Digest,
        body: AsyncIterable[bytes],
        length: int | None,
        *,
        held: HeldLease | None,
        origin: Origin | None = None,
    ) -> BlobStat:
        """The last chunk is appended to the session's file, which becomes the blob."""
        size, hasher = await self._append_locked(claim, body, length)
        await self._verify(
            await self._digest_of(claim.info, size, expected.algorithm, hasher), expected, claim
        )
        place = self._moving(layout.upload_data(claim.repository, claim.id), expected, size)
        await self._place(
            claim.repository, expected, size, place, claim=claim, held=held, origin=origin
        )
        return BlobStat(expected, size)

    async def _store_streamed(
        self,
        repository: str,
        expected: Digest,
        body: AsyncIterable[bytes],
        length: int | None,
        origin: Origin | None = None,
        *,
        claim: _Claim | None = None,
    ) -> BlobStat:
        """A large blob whose digest is known before its first byte (a monolithic POST,
        or the PUT of an empty session `claim`) streams, hashed on the way, into a new
        file at the blob's path, which appears there when committed, once verified and
        under the blob's lease; until then nobody sees any of it."""
        staging = str(uuid.uuid4()) if claim is None else claim.id
        hasher = Hasher(expected.algorithm)
        writer = await self._storage.new_file(
            layout.blob_data(expected), staging=layout.upload_data(repository, staging)
        )
        try:
            async with task_group() as nursery:
                if claim is not None:
                    nursery.start_soon(self._keep_lease, claim)
                received = await pump(body, writer, hasher, length)
                nursery.cancel_scope.cancel()
            if length is not None and received != length:
                raise SizeInvalid(f"received {received} bytes but the request announced {length}")
            await self._verify(hasher.digest(), expected, claim)
            await self._place(
                repository, expected, received, writer.commit, claim=claim, origin=origin
            )
        finally:
            with trio.CancelScope(shield=True):
                # A no-op once committed; otherwise what was written goes.
                await writer.cancel()
                if claim is None:
                    await self._remove_files(repository, staging)
        return BlobStat(expected, received)

    async def _verify(self, actual: Digest, expected: Digest, claim: _Claim | None) -> None:
        if actual == expected:
            return
        if claim is not None:
            await self._abandon(claim.info)
        raise DigestInvalid(
            f"content hashes to {actual}, not {expected}; "
            + ("the upload was discarded" if claim is not None else "nothing was stored"),
            {"expected": str(expected), "actual": str(actual)},
        )

    def _writing(self, digest: Digest, data: bytes) -> Callable[[], Awaitable[None]]:
        return partial(self._storage.put_content, layout.blob_data(digest), data)

    def _moving(self, source: str, digest: Digest, size: int) -> Callable[[], Awaitable[None]]:
        if size == 0:
            # An empty upload may have no data file at all.
            return self._writing(digest, b"")
        return partial(self._storage.move, source, layout.blob_data(digest))

    async def _place(
        self,
        repository: str,
        digest: Digest,
        size: int,
        put: Callable[[], Awaitable[None]],
        *,
        claim: _Claim | None = None,
        held: HeldLease | None = None,
        origin: Origin | None = None,
    ) -> None:
        """The shared tail: `put` the blob in place and link it, under the blob's lease,
        then end the session `claim` if there is one.

        The lease is `held` when the caller took it with the session's and it is still
        fresh, else one taken here (waiting for it if need be). The link releases it; on
        failure a lease taken here is released here, `held` by the caller."""
        name = blob_lease(str(digest))
        holder = None
        if held is not None:
            if held.fresh():
                holder = held.holder
            else:
                # Held since before the body arrived (a slow client), it might expire
                # during the move: give it back and take a new one like anybody else.
                await self._metadata.release_lock(name, held.holder)
        # While the file is put in place and linked, no sweep may remove this blob.
        taken_here = holder is None
        if holder is None:
            holder = await self._wait_for_lease(name, claim)
        try:
            # Content-addressed: replacing an existing copy with identical bytes is
            # harmless, and both ways are atomic, so readers never see a partial blob.
            await put()
            await self._metadata.link_blob(
                repository,
                str(digest),
                size,
                upload_id=claim.id if claim is not None else None,
                release_lock=holder,
                origin=origin,
            )
        except BaseException:
            if taken_here:
                with trio.CancelScope(shield=True):
                    await self._metadata.release_lock(name, holder)
            raise
        if claim is not None:
            await self._remove_files(claim.repository, claim.id)

    async def _wait_for_lease(self, name: str, claim: _Claim | None) -> str:
        """Take the blob's lease, waiting for it if need be.

        The wait can outlast the session's lease (a sweep removing this very blob holds
        the blob's); the session's is renewed meanwhile, or another request could take
        the session and write to the file about to become the blob."""
        if claim is None:
            return await self._locks.acquire(name, ttl=self._blob_lease_seconds)
        async with task_group() as nursery:
            nursery.start_soon(self._keep_lease, claim)
            holder = await self._locks.acquire(name, ttl=self._blob_lease_seconds)
            nursery.cancel_scope.cancel()
        return holder

    async def _digest_of(
        self, info: UploadInfo, size: int, algorithm: str, hasher: Hasher | None
    ) -> Digest:
        if hasher is not None and hasher.algorithm == algorithm and hasher.size == size:
            return hasher.digest()
        if not size:
            return Hasher(algorithm).digest()
        path = layout.upload_data(info.repository, info.id)
        return (await hash_stored(self._storage, path, algorithm)).digest()

    async def _abandon(self, info: UploadInfo) -> None:
        await self._metadata.delete_upload(info.id)
        await self._remove_files(info.repository, info.id)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36
