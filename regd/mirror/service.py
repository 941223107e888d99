"""The pull-through cache: what the registry layer asks when a mirrored repository misses.

Manifests fetched by tag are kept with a time to live and revalidated with a HEAD once it
has passed; by digest they never change. Blobs are fetched by a task of the mirror's own,
written to storage as an upload would be (hashed on the way, verified before they become
visible), and handed to the first client while they arrive. When the upstream fails, a
tag cached before is served as it was, marked stale.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import trio

from regd.client.tasks import task_group
from regd.clock import Clock
from regd.config import MirrorConfig
from regd.errors import BlobUnknown, ManifestInvalid
from regd.metadata import ManifestInfo, MetadataStore, Origin
from regd.metadata import mirror_cache as cache
from regd.mirror.errors import UpstreamError
from regd.mirror.flights import END, STORED, BlobFetch, Flights, chunks_of
from regd.mirror.routing import Route, Routes
from regd.mirror.upstream import Upstream
from regd.oci.digest import Digest

log = logging.getLogger("regd.mirror")

# A manifest larger than a registry must accept is not cached (regd would refuse its push).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# Pulls of cached content are noted at most this often per item: the order of eviction
# needs minutes, not every request's write.
TOUCH_EVERY = 60.0
# A fetch of one replica is seen by the others through this lease; it is renewed while
# bytes arrive, so a crashed replica's lease lapses soon.
FETCH_LEASE_SECONDS = 30.0
TOUCHED_MEMORY = 10_000
# The upstream's bytes are gathered into pieces this large once, and the same piece goes
# to storage (hashed and written in one hand-off each) and to the first client: one copy
# and a few hand-offs per MiB instead of one per network read, which on regd's one
# event-loop thread is what a fill's rate is made of. At least the storage pipeline's
# WRITE_CHUNK (regd.registry.streaming), so it passes each piece on without joining again.
FILL_PIECE = 1024 * 1024


def _fetch_key(route: Route, digest: Digest) -> str:
    # Per mirror: another mirror's upstream may not have the blob, or may not be trusted
    # for it.
    return f"{route.mirror.prefix}@{digest}"


class StoreBlob(Protocol):
    """Writes a blob body to storage and links it, verified against `digest` (the upload
    path's monolithic store)."""

    def __call__(
        self, repository: str, digest: str, body: AsyncIterable[bytes], length: int | None
    ) -> Awaitable[object]: ...


class OpenStored(Protocol):
    def __call__(
        self, digest: Digest, offset: int, length: int
    ) -> Awaitable[AsyncIterable[bytes]]: ...


class LiveBlob:
    """A blob read by its first client while it arrives from the upstream."""

    def __init__(self, chunks: AsyncIterator[bytes], length: int) -> None:
        self._chunks = chunks
        self.length = length

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


class Mirrors:
    def __init__(
        self,
        routes: Routes,
        metadata: MetadataStore,
        clock: Clock,
        store_blob: StoreBlob,
        open_stored: OpenStored,
    ) -> None:
        self.routes = routes
        self._metadata = metadata
        self._clock = clock
        self._store_blob = store_blob
        self._open_stored = open_stored
        self._upstreams = {m.prefix: Upstream(m, clock) for m in routes.mirrors}
        # httpx notes every request at INFO; regd's own lines say what a fill did.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._manifests: Flights[tuple[str, str], str | None] = Flights()
        self._referrer_flights: Flights[tuple[str, str], bytes] = Flights()
        self._fetches: dict[str, BlobFetch] = {}
        self._nursery: trio.Nursery | None = None
        # When this process last noted a pull of a blob (bounded; forgetting costs a write).
        self._touched: dict[tuple[str, str], float] = {}

    def find(self, repository: str) -> Route | None:
        return self.routes.find(repository) if self.routes else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the blob fetches until cancelled (regd runs it beside the server)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for upstream in self._upstreams.values():
                    await upstream.aclose()

    def stop(self) -> None:
        """Cancel the fills under way (nothing of theirs becomes visible) and end `run`."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _upstream(self, mirror: MirrorConfig) -> Upstream:
        return self._upstreams[mirror.prefix]

    # -- manifests -------------------------------------------------------------------

    async def manifest(
        self,
        route: Route,
        reference: str,
        *,
        by_digest: bool,
        with_payload: bool,
        origin: Origin | None = None,
    ) -> ManifestInfo | None:
        """The manifest from the cache, fetched or revalidated as needed; None when the
        upstream does not have it. A fill is reported as `origin`'s (None: not reported)."""
        if by_digest:
            found = await self._cached(route, reference, with_payload)
            if found is not None:
                return found
            digest = await self._single(
                route, reference, lambda: self._fetch(route, reference, origin)
            )
            return None if digest is None else await self._cached(route, digest, with_payload)

        tag = await cache.get_tag(self._metadata, route.repository, reference)
        if tag is not None and self._clock.now() - tag.checked_at < route.mirror.manifest_ttl:
            found = await self._cached(route, tag.digest, with_payload)
            if found is not None:
                return found
        try:
            digest = await self._single(
                route, reference, lambda: self._refresh(route, reference, tag, origin)
            )
        except UpstreamError as exc:
            if tag is None:
                raise
            found = await self._cached(route, tag.digest, with_payload, stale=exc.cause)
            if found is None:
                raise
            log.warning(
                "serving stale repository=%s tag=%s digest=%s upstream=%s cause=%s",
                route.repository,
                reference,
                tag.digest,
                route.mirror.upstream,
                exc.cause,
            )
            return found
        return None if digest is None else await self._cached(route, digest, with_payload)

    async def _single(
        self, route: Route, reference: str, fetch: Callable[[], Awaitable[str | None]]
    ) -> str | None:
        upstream = self._upstream(route.mirror)
        return await self._manifests.run(
            (route.repository, reference),
            fetch,
            wait=route.mirror.timeout,
            on_timeout=upstream.failure(
                f"no answer for {reference} within {route.mirror.timeout:.0f} s"
            ),
        )

    async def _cached(
        self, route: Route, digest: str, with_payload: bool, stale: str | None = None
    ) -> ManifestInfo | None:
        found = await cache.get_manifest(
            self._metadata, route.repository, digest, with_payload=with_payload
        )
        if found is None:
            return None
        if self._clock.now() - found.pulled_at > TOUCH_EVERY:
            await cache.touch_manifest(self._metadata, route.repository, digest)
        return ManifestInfo(
            digest=found.digest,
            media_type=found.media_type,
            size=found.size,
            artifact_type=None,
            annotations={},
            created_at=found.fetched_at,
            payload=found.payload,
            stale=stale,
        )

    async def _refresh(
        self, route: Route, tag: str, known: cache.CachedTag | None, origin: Origin | None
    ) -> str | None:
        """Where the tag points upstream now; a HEAD first when a digest is cached, so an
        unchanged tag costs no download (and no pull on the upstream's rate limit)."""
        upstream = self._upstream(route.mirror)
        if known is not None:
            head = await upstream.head_manifest(route.upstream_repository, tag)
            if head is None:
                return None
            if str(head.digest) == known.digest and await cache.get_manifest(
                self._metadata, route.repository, known.digest, with_payload=False
            ):
                await cache.confirm_tag(self._metadata, route.repository, tag)
                return known.digest
        return await self._fetch(route, tag, origin)

    async def _fetch(self, route: Route, reference: str, origin: Origin | None) -> str | None:
        upstream = self._upstream(route.mirror)
        fetched = await upstream.get_manifest(route.upstream_repository, reference)
        if fetched is None:
            return None
        if len(fetched.data) > MAX_MANIFEST_SIZE:
            raise ManifestInvalid(
                f"the upstream's manifest {reference} is {len(fetched.data)} bytes; "
                f"the limit is {MAX_MANIFEST_SIZE}"
            )
        tag = None if ":" in reference else reference
        await cache.put_manifest(
            self._metadata,
            route.mirror.prefix,
            route.repository,
            str(fetched.digest),
            fetched.media_type,
            fetched.data,
            tag,
            origin,
        )
        log.info(
            "cache fill kind=manifest repository=%s reference=%s digest=%s",
            route.repository,
            reference,
            fetched.digest,
        )
        return str(fetched.digest)

    # -- referrers -------------------------------------------------------------------

    async def referrers(
        self, route: Route, subject: Digest
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The upstream's referrers of `subject` (descriptors, unfiltered), kept as a tag
        is: fresh for the mirror's `manifest_ttl`, then asked again, and when the upstream
        fails, served as last seen with the cause (else None) as the second item."""
        subject_key = str(subject)
        cached = await cache.get_referrers(self._metadata, route.repository, subject_key)
        if cached is not None and self._clock.now() - cached.checked_at < route.mirror.manifest_ttl:
            return json.loads(cached.descriptors), None
        upstream = self._upstream(route.mirror)

        async def fetch() -> bytes:
            found = await upstream.referrers(route.upstream_repository, subject)
            # Only well-formed descriptors are kept and served again: the upstream's list
            # is not trusted to be what an OCI index may hold.
            descriptors = json.dumps([d.to_json() for d in found]).encode()
            await cache.put_referrers(
                self._metadata, route.mirror.prefix, route.repository, subject_key, descriptors
            )
            return descriptors

        try:
            fetched = await self._referrer_flights.run(
                (route.repository, subject_key),
                fetch,
                wait=route.mirror.timeout,
                on_timeout=upstream.failure(
                    f"no referrers of {subject} within {route.mirror.timeout:.0f} s"
                ),
            )
        except UpstreamError as exc:
            if cached is None:
                raise
            log.warning(
                "serving stale referrers repository=%s subject=%s upstream=%s cause=%s",
                route.repository,
                subject,
                route.mirror.upstream,
                exc.cause,
            )
            return json.loads(cached.descriptors), exc.cause
        return json.loads(fetched), None

    # -- blobs -----------------------------------------------------------------------

    async def note_pull(self, route: Route, digest: str) -> None:
        """A cached blob was served: it moves to the back of the eviction order."""
        key = (route.repository, digest)
        now = self._clock.now()
        if now - self._touched.get(key, 0.0) < TOUCH_EVERY:
            return
        if len(self._touched) >= TOUCHED_MEMORY:
            self._touched.clear()
        self._touched[key] = now
        await cache.touch_blob(self._metadata, route.repository, digest)

    async def blob_size(self, route: Route, digest: Digest) -> tuple[int, bool]:
        """(size, stored): stored when the blob is now linked into the repository (from
        another repository of the mirror); else it is still upstream."""
        fetch = self._fetches.get(_fetch_key(route, digest))
        if fetch is not None:
            return fetch.size, False
        size = await self._adopt(route, digest)
        if size is not None:
            return size, True
        found = await self._upstream(route.mirror).blob_size(route.upstream_repository, digest)
        if found is None:
            raise BlobUnknown(
                f"blob {digest} is not in repository {route.repository} nor upstream",
                {"digest": str(digest)},
            )
        return found, False

    async def _adopt(self, route: Route, digest: Digest) -> int | None:
        """Link a blob the mirror already holds in another repository; its size or None."""
        source = await cache.cached_in(self._metadata, route.mirror.prefix, str(digest))
        if source is None:
            return None
        size = await self._metadata.mount_blob(route.repository, str(digest), source)
        if size is not None and source != route.repository:
            await cache.put_blob(
                self._metadata, route.mirror.prefix, route.repository, str(digest), size
            )
        return size

    async def open_blob(
        self,
        route: Route,
        digest: Digest,
        size: int,
        offset: int,
        length: int,
        origin: Origin | None = None,
    ) -> LiveBlob | None:
        """The blob as it arrives, for the first client asking for all of it; None once it
        is stored (fetched for, or by, someone else), to be read from storage. A fill this
        request starts is reported as `origin`'s (None: not reported)."""
        whole = offset == 0 and length == size
        mirror = route.mirror
        while True:
            fetch = self._fetches.get(_fetch_key(route, digest))
            if fetch is None:
                if await self._adopt(route, digest) is not None:
                    return None
                if _fetch_key(route, digest) in self._fetches:
                    continue  # another request started the fill meanwhile: follow it
                if self._nursery is None:
                    raise self._upstream(mirror).failure("the mirror is not running")
                fetch = BlobFetch(str(digest), size)
                self._fetches[_fetch_key(route, digest)] = fetch
                receive = fetch.attach_reader() if whole else None
                self._nursery.start_soon(self._fetch_blob, route, digest, fetch, origin)
                if receive is not None:
                    return LiveBlob(chunks_of(receive, self._stored(digest, size)), size)
            if not await fetch.wait(mirror.timeout):
                raise self._upstream(mirror).failure(
                    f"blob {digest} stalled: nothing arrived for {mirror.timeout:.0f} s"
                )
            if fetch.error is not None:
                raise fetch.error
            if await self._adopt(route, digest) is not None:
                return None

    def _stored(self, digest: Digest, size: int) -> Callable[[], Awaitable[AsyncIterable[bytes]]]:
        async def open_it() -> AsyncIterable[bytes]:
            return await self._open_stored(digest, 0, size)

        return open_it

    async def _fetch_blob(
        self, route: Route, digest: Digest, fetch: BlobFetch, origin: Origin | None
    ) -> None:
        mirror = route.mirror
        upstream = self._upstream(mirror)
        lease = f"mirror-fetch:{_fetch_key(route, digest)}"
        holder = str(uuid.uuid4())
        # Until the fill has ended well, its end is a failure (regd stopping cancels it).
        error: Exception | None = upstream.failure(f"the fill of blob {digest} was cancelled")
        try:
            if await self._wait_for_other_replica(route, digest, fetch, lease, holder):
                await fetch.give(STORED, mirror.timeout)
            else:
                async with task_group() as nursery:
                    nursery.start_soon(self._keep_lease, lease, holder)
                    await self._transfer(route, digest, fetch, upstream, origin)
                    nursery.cancel_scope.cancel()
            error = None
        except Exception as exc:
            error = exc
            log.warning(
                "cache fill failed kind=blob repository=%s digest=%s error=%s",
                route.repository,
                digest,
                exc,
            )
        finally:
            if self._fetches.get(_fetch_key(route, digest)) is fetch:
                del self._fetches[_fetch_key(route, digest)]
            with trio.CancelScope(shield=True):
                await self._metadata.release_lock(lease, holder)
                await fetch.finish(error, mirror.timeout)

    async def _wait_for_other_replica(
        self, route: Route, digest: Digest, fetch: BlobFetch, lease: str, holder: str
    ) -> bool:
        """Take the fetch lease; True when another replica stored the blob meanwhile."""
        delay = 0.05
        while not await self._metadata.acquire_lock(lease, holder, FETCH_LEASE_SECONDS):
            # Held by another replica's fill, renewed while it runs: it lapses soon after
            # that replica stops, and the wait with it. Meanwhile this process's waiters
            # count the other fill as progress.
            fetch.beats += 1
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)
            if await self._adopt(route, digest) is not None:
                return True
        return await self._adopt(route, digest) is not None

    async def _keep_lease(self, lease: str, holder: str) -> None:
        while True:
            await trio.sleep(FETCH_LEASE_SECONDS / 3)
            await self._metadata.acquire_lock(lease, holder, FETCH_LEASE_SECONDS)

    async def _transfer(
        self,
        route: Route,
        digest: Digest,
        fetch: BlobFetch,
        upstream: Upstream,
        origin: Origin | None,
    ) -> None:
        timeout = route.mirror.timeout
        async with upstream.open_blob(route.upstream_repository, digest) as stream:
            if stream.size is not None and stream.size != fetch.size:
                raise upstream.failure(
                    f"blob {digest} is {stream.size} bytes, its HEAD said {fetch.size}"
                )
            last: list[bytes] = []

            async def body() -> AsyncIterator[bytes]:
                # The first client gets each piece once the next one is complete, and the
                # last only once the blob is verified and stored: it never receives an
                # unchecked whole.
                gathered: list[bytes] = []
                gathered_size = 0
                held: bytes | None = None
                async for chunk in stream.chunks():
                    fetch.received += len(chunk)
                    gathered.append(chunk)
                    gathered_size += len(chunk)
                    if gathered_size >= FILL_PIECE:
                        piece = b"".join(gathered)
                        gathered, gathered_size = [], 0
                        if held is not None:
                            await fetch.give(held, timeout)
                        held = piece
                        yield piece
                if gathered:
                    piece = b"".join(gathered)
                    if held is not None:
                        await fetch.give(held, timeout)
                    held = piece
                    yield piece
                if held is not None:
                    last.append(held)

            await self._store_blob(route.repository, str(digest), body(), fetch.size)
        await cache.put_blob(
            self._metadata, route.mirror.prefix, route.repository, str(digest), fetch.size, origin
        )
        for chunk in last:
            await fetch.give(chunk, timeout)
        await fetch.give(END, timeout)
        log.info(
            "cache fill kind=blob repository=%s digest=%s size=%d",
            route.repository,
            digest,
            fetch.size,
        )

    # -- bounds ----------------------------------------------------------------------

    async def evict(self, *, dry_run: bool) -> list[cache.CacheEntry]:
        """For each mirror over its size limit, the least recently pulled entries until it
        fits; forgotten unless `dry_run`. Their blobs go with the collection that follows."""
        doomed: list[cache.CacheEntry] = []
        for mirror in self.routes.mirrors:
            if not mirror.max_size:
                continue
            entries = await cache.entries(self._metadata, mirror.prefix)
            total = sum(e.size for e in entries)
            for entry in entries:
                if total <= mirror.max_size:
                    break
                doomed.append(entry)
                total -= entry.size
        if doomed and not dry_run:
            await cache.remove(self._metadata, doomed)
            log.info("cache eviction entries=%d bytes=%d", len(doomed), sum(e.size for e in doomed))
        return doomed

    async def usage(self) -> list[dict[str, Any]]:
        """Per mirror: what its cache holds against its limit."""
        held = await cache.usage(self._metadata)
        return [
            {
                "prefix": m.prefix,
                "upstream": m.upstream,
                "default": m.default,
                "bytes": held.get(m.prefix, (0, 0))[0],
                "entries": held.get(m.prefix, (0, 0))[1],
                "max_size": m.max_size,
            }
            for m in self.routes.mirrors
        ]

    async def entries(self, prefix: str | None = None) -> list[cache.CacheEntry]:
        return await cache.entries(self._metadata, prefix)

    async def remove(
        self, prefix: str | None, repository: str | None, digest: str | None
    ) -> list[cache.CacheEntry]:
        """Evict what matches now (its blobs go at the next collection)."""
        doomed = [
            e
            for e in await cache.entries(self._metadata, prefix)
            if (repository is None or e.repository == repository)
            and (digest is None or e.digest == digest)
        ]
        if doomed:
            await cache.remove(self._metadata, doomed)
        return doomed

    async def kept_blobs(self) -> set[str]:
        return await cache.cached_blob_digests(self._metadata)
