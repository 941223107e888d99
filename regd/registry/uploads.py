"""Blob upload sessions: monolithic, streamed and chunked pushes.

The session's truth is its metadata row (repository, bytes accepted). The bytes live in
`_uploads/<id>/data`. A request that appends takes the row's lease first, so two replicas
never interleave writes to one session; a request that fails or is cut off rolls the file
back to the accepted size, leaving the session usable.

Hashing: hashlib cannot serialise a running sha256, so the hash state stays in the
process that received the bytes. When the next request for the session lands in the same
process and the state still matches the accepted size, hashing continues; otherwise the
bytes are hashed again from storage when the upload completes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable
from dataclasses import dataclass

import trio

from regd.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeInvalid,
    SizeInvalid,
)
from regd.metadata import MetadataStore, UploadInfo
from regd.oci.digest import Digest, Hasher
from regd.registry import validation
from regd.registry.blobs import BlobStat
from regd.registry.leases import BLOB_LEASE_SECONDS, HeldLease, Leases
from regd.registry.tasks import task_group
from regd.storage import InvalidOffset, PathNotFound, StorageDriver, Writer, layout

# Bytes gathered before one hand-off to a worker thread: large enough that thread
# switches cost little, small enough to bound memory per request.
WRITE_CHUNK = 1024 * 1024
HASH_CHUNK = 4 * 1024 * 1024
# A request appending to a session renews its lease every third of this; after a crash
# the session is free again within this long.
LEASE_SECONDS = 10.0
# Chunks that may wait between the receiving, hashing and writing stages of one upload.
PIPELINE_DEPTH = 2


@dataclass(frozen=True, slots=True)
class UploadStatus:
    id: str
    repository: str
    size: int


class _HashStates:
    """Running hashes of the sessions this process appended to last (bounded, LRU)."""

    def __init__(self, capacity: int = 1024) -> None:
        self._states: OrderedDict[str, Hasher] = OrderedDict()
        self._capacity = capacity

    def take(self, upload_id: str, size: int, algorithm: str) -> Hasher | None:
        """The state for a session at `size`, removed from the cache while in use."""
        hasher = self._states.pop(upload_id, None)
        if hasher is not None and hasher.size == size and hasher.algorithm == algorithm:
            return hasher
        return None

    def put(self, upload_id: str, hasher: Hasher) -> None:
        self._states[upload_id] = hasher
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._states.pop(upload_id, None)


class Uploads:
    def __init__(
        self,
        storage: StorageDriver,
        metadata: MetadataStore,
        *,
        lease_seconds: float = LEASE_SECONDS,
        blob_lease_seconds: float = BLOB_LEASE_SECONDS,
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._lease_seconds = lease_seconds
        self._blob_lease_seconds = blob_lease_seconds
        self._hashes = _HashStates()
        self._locks = Leases(metadata)

    # -- sessions ------------------------------------------------------------------------

    async def start(self, repository: str) -> UploadStatus:
        name = validation.repository_name(repository)
        upload_id = str(uuid.uuid4())
        await self._metadata.create_upload(upload_id, name)
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
        self._hashes.drop(info.id)
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
        lease = str(uuid.uuid4())
        held, _ = await self._acquire(repository, upload_id, lease, start)
        try:
            size = await self._append_locked(held, lease, body, length)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._metadata.release_upload(held.id, lease, held.size)
            raise
        await self._metadata.release_upload(held.id, lease, size)
        return UploadStatus(held.id, held.repository, size)

    async def _acquire(
        self,
        repository: str,
        upload_id: str,
        lease: str,
        start: int | None,
        *,
        blob: str | None = None,
        room: int = 0,
    ) -> tuple[UploadInfo, HeldLease | None]:
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
        delay = 0.05
        deadline = trio.current_time() + self._lease_seconds + 1
        while True:
            # The common case is one transaction: the session exists and is free.
            blob_lease = None
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
                blob_lease = wanted if taken else None
            if held is not None:
                return held, blob_lease
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

    async def _append_locked(
        self, info: UploadInfo, lease: str, body: AsyncIterable[bytes], length: int | None
    ) -> int:
        hasher = self._hashes.take(info.id, info.size, "sha256")
        if hasher is None and info.size == 0:
            hasher = Hasher("sha256")
        writer = await self._open_writer(info)
        try:
            async with task_group() as nursery:
                nursery.start_soon(self._keep_lease, info.id, lease)
                received = await _pump(body, writer, hasher, length)
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
        if hasher is not None:
            self._hashes.put(info.id, hasher)
        return writer.size

    async def _keep_lease(self, upload_id: str, lease: str) -> None:
        """Renew the lease while this request needs it (a long body, a wait), so that no
        one else takes it over."""
        while True:
            await trio.sleep(self._lease_seconds / 3)
            if not await self._metadata.renew_upload(upload_id, lease, self._lease_seconds):
                raise BlobUploadInvalid(
                    f"upload {upload_id} was taken over by another request; start again"
                )

    # -- completing ----------------------------------------------------------------------

    async def finish(
        self,
        repository: str,
        upload_id: str,
        digest: str | None,
        body: AsyncIterable[bytes],
        *,
        start: int | None = None,
        length: int | None = None,
    ) -> BlobStat:
        """Append a final chunk (possibly empty), verify the digest and store the blob."""
        if digest is None:
            # An unknown session is the more useful answer than a missing digest.
            await self._session(repository, upload_id)
            raise DigestInvalid("completing an upload needs ?digest=")
        expected = validation.digest(digest)
        lease = str(uuid.uuid4())
        if length is not None and length <= WRITE_CHUNK:
            # A small session with a small last chunk is received, hashed and stored in
            # moments: the blob's lease is taken in the transaction that takes the
            # session's, rather than in one of its own before the file is moved. A long
            # body must not hold the blob's lease while it streams.
            held, blob_lease = await self._acquire(
                repository,
                upload_id,
                lease,
                start,
                blob=_lease_name(expected),
                room=WRITE_CHUNK - length,
            )
        else:
            held, blob_lease = await self._acquire(repository, upload_id, lease, start)
        try:
            whole = None
            if held.size == 0 and length is not None and length <= WRITE_CHUNK:
                # The whole blob is this small body: it is checked in memory and written
                # to its place in one step, without passing through the session's file.
                whole = await _receive_small(body, length)
                size = len(whole)
                actual = Digest.of(whole, expected.algorithm)
            else:
                size = await self._append_locked(held, lease, body, length)
                actual = await self._digest_of(held, size, expected.algorithm)
            if actual != expected:
                await self._abandon(held)
                raise DigestInvalid(
                    f"content hashes to {actual}, not {expected}; the upload was discarded",
                    {"expected": str(expected), "actual": str(actual)},
                )
            # From here on the blob's lease is _store's to release.
            handed, blob_lease = blob_lease, None
            await self._store(
                held.repository,
                held.id,
                expected,
                size,
                upload_row=True,
                lease=handed,
                data=whole,
                session_lease=lease,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                # Whatever stayed in the session (it may already be gone) is released,
                # with the blob's lease if it is still ours to give back.
                await self._metadata.release_upload(
                    held.id,
                    lease,
                    held.size,
                    release_lock=(blob_lease.name, blob_lease.holder) if blob_lease else None,
                )
            raise
        return BlobStat(expected, size)

    async def monolithic(
        self, repository: str, digest: str, body: AsyncIterable[bytes], length: int | None
    ) -> BlobStat:
        """POST with ?digest=: the whole blob in one request, no session row."""
        name = validation.repository_name(repository)
        expected = validation.digest(digest)
        upload_id = str(uuid.uuid4())
        if length is not None and length <= WRITE_CHUNK:
            data = await _receive_small(body, length)
            actual = Digest.of(data, expected.algorithm)
            if actual != expected:
                raise DigestInvalid(
                    f"content hashes to {actual}, not {expected}; nothing was stored",
                    {"expected": str(expected), "actual": str(actual)},
                )
            await self._store(name, upload_id, expected, len(data), upload_row=False, data=data)
            return BlobStat(expected, len(data))
        hasher = Hasher(expected.algorithm)
        writer = await self._storage.writer(layout.upload_data(name, upload_id))
        try:
            try:
                received = await _pump(body, writer, hasher, length)
                if length is not None and received != length:
                    raise SizeInvalid(
                        f"received {received} bytes but the request announced {length}"
                    )
                actual = hasher.digest()
                if actual != expected:
                    raise DigestInvalid(
                        f"content hashes to {actual}, not {expected}; nothing was stored",
                        {"expected": str(expected), "actual": str(actual)},
                    )
            except BaseException:
                await writer.cancel()
                raise
            await writer.commit()
            await self._store(name, upload_id, expected, received, upload_row=False)
        finally:
            with trio.CancelScope(shield=True):
                await self._remove_files(name, upload_id)
        return BlobStat(expected, received)

    async def _digest_of(self, info: UploadInfo, size: int, algorithm: str) -> Digest:
        hasher = self._hashes.take(info.id, size, algorithm)
        if hasher is not None:
            return hasher.digest()
        # The running hash lives elsewhere (another replica, or before a restart).
        hasher = Hasher(algorithm)
        if size:
            reader = await self._storage.reader(layout.upload_data(info.repository, info.id))
            try:
                while chunk := await reader.read(HASH_CHUNK):
                    await trio.to_thread.run_sync(hasher.update, chunk)
            finally:
                await reader.aclose()
        return hasher.digest()

    async def _store(
        self,
        repository: str,
        upload_id: str,
        digest: Digest,
        size: int,
        *,
        upload_row: bool,
        lease: HeldLease | None = None,
        data: bytes | None = None,
        session_lease: str | None = None,
    ) -> None:
        """Put the blob in place and link it, under the blob's lease: `lease` when the
        caller holds it (this then releases it), else one taken here.

        The bytes are the session's file, moved, or `data` when given, written."""
        source = layout.upload_data(repository, upload_id)
        name = _lease_name(digest)
        holder = lease.holder if lease is not None else None
        try:
            if size == 0 and data is None:
                # An empty session may have no data file at all.
                writer = await self._storage.writer(source)
                await writer.commit()
            if lease is not None and not lease.fresh():
                # Held since before the body arrived (a slow client), it might expire
                # during the move: give it back and take a new one like anybody else.
                await self._metadata.release_lock(name, lease.holder)
                holder = None
            # While the file is put in place and linked, no sweep may remove this blob.
            if holder is None:
                holder = await self._wait_for_lease(name, upload_id, session_lease)
            # Content-addressed: replacing an existing copy with identical bytes is
            # harmless, and both ways are atomic, so readers never see a partial blob.
            if data is None:
                await self._storage.move(source, layout.blob_data(digest))
            else:
                await self._storage.put_content(layout.blob_data(digest), data)
            await self._metadata.link_blob(
                repository,
                str(digest),
                size,
                upload_id=upload_id if upload_row else None,
                release_lock=holder,
            )
        except BaseException:
            if holder is not None:
                with trio.CancelScope(shield=True):
                    await self._metadata.release_lock(name, holder)
            raise
        self._hashes.drop(upload_id)
        if data is None or upload_row:
            # (A POST whose body was written straight to its place made no files.)
            await self._remove_files(repository, upload_id)

    async def _wait_for_lease(self, name: str, upload_id: str, session_lease: str | None) -> str:
        """Take the blob's lease, waiting for it if need be.

        The wait can outlast the session's lease (a sweep removing this very blob holds
        the blob's); the session's is renewed meanwhile, or another request could take
        the session and write to the file about to become the blob."""
        if session_lease is None:
            return await self._locks.acquire(name, ttl=self._blob_lease_seconds)
        async with task_group() as nursery:
            nursery.start_soon(self._keep_lease, upload_id, session_lease)
            holder = await self._locks.acquire(name, ttl=self._blob_lease_seconds)
            nursery.cancel_scope.cancel()
        return holder

    async def _abandon(self, info: UploadInfo) -> None:
        await self._metadata.delete_upload(info.id)
        self._hashes.drop(info.id)
        await self._remove_files(info.repository, info.id)


async def _pump(
    body: AsyncIterable[bytes], writer: Writer, hasher: Hasher | None, length: int | None
) -> int:
    """Copy a request body to storage, hashing on the way, in bounded pieces.

    Receiving, hashing and writing run as three stages joined by small channels, so a
    chunk is hashed (one core) and written (the disk) while the next one arrives.
    Memory stays bounded by the channels' capacity times WRITE_CHUNK.
    """
    if length is not None and length <= WRITE_CHUNK:
        # A small body (a config, a small layer): one hash and one write, no stages.
        data = await _gather(body, length)
        size = len(data)
        if data:
            if hasher is not None:
                hasher.update(data)
            await writer.write(data)
        return size

    received = 0
    to_writer, for_writer = trio.open_memory_channel[bytes](PIPELINE_DEPTH)
    to_hasher, for_hasher = trio.open_memory_channel[bytes](PIPELINE_DEPTH)

    async def write_stage() -> None:
        async with for_writer:
            async for data in for_writer:
                await writer.write(data)

    async def hash_stage(h: Hasher) -> None:
        async with for_hasher:
            async for data in for_hasher:
                await trio.to_thread.run_sync(h.update, data)

    async with task_group() as nursery:
        nursery.start_soon(write_stage)
        if hasher is not None:
            nursery.start_soon(hash_stage, hasher)
        else:
            to_hasher.close()
            for_hasher.close()
        async with to_writer, to_hasher:
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in body:
                if not chunk:
                    continue
                received += len(chunk)
                if length is not None and received > length:
                    raise SizeInvalid(
                        f"the request body is longer than the announced {length} bytes"
                    )
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= WRITE_CHUNK:
                    data = b"".join(pending)
                    pending, pending_size = [], 0
                    await to_writer.send(data)
                    if hasher is not None:
                        await to_hasher.send(data)
            if pending:
                data = b"".join(pending)
                await to_writer.send(data)
                if hasher is not None:
                    await to_hasher.send(data)
    return received


async def _gather(body: AsyncIterable[bytes], length: int) -> bytes:
    """A body announced as `length` bytes (small), in one piece; more is refused."""
    parts: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > length:
            raise SizeInvalid(f"the request body is longer than the announced {length} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _receive_small(body: AsyncIterable[bytes], length: int) -> bytes:
    """A small body whole, exactly as long as announced."""
    data = await _gather(body, length)
    if len(data) != length:
        raise SizeInvalid(
            f"received {len(data)} bytes but the request announced {length}",
            {"received": len(data), "expected": length},
        )
    return data


def _lease_name(digest: Digest) -> str:
    """The lease held while a blob's file is placed or removed (see registry.lifecycle)."""
    return f"blob:{digest}"


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36
