"""One mirror's side of the wire: the shared registry client, pointed at its upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from regd.client import (
    BlobStream,
    ClientError,
    Credentials,
    FetchedManifest,
    ManifestHead,
    NotFoundError,
    RegistryClient,
)
from regd.clock import Clock
from regd.config import MirrorConfig
from regd.mirror.errors import UpstreamError
from regd.oci.digest import Digest
from regd.oci.manifest import Descriptor
from regd.oci.reference import Reference

# httpcore reads a response 64 KiB at a time, and in regd's one event-loop thread each read
# costs about as much as the bytes' journey to disk and to the client together: a fill of
# the upstream's blob ran at half the rate it does with 1 MiB reads (measured with
# bench/mirror.py). Only regd's process imports this module; regctl keeps the default.
# It is httpx's transport, not an API of its own: if it moves, the default stays.
READ_SIZE = 1024 * 1024
try:
    from httpcore._async.http11 import AsyncHTTP11Connection
except ImportError:  # pragma: no cover
    pass
else:
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
        AsyncHTTP11Connection.READ_NUM_BYTES = READ_SIZE

try:
    from h11._receivebuffer import ReceiveBuffer
except ImportError:  # pragma: no cover
    pass
else:
    # h11 copies every read into its bytearray buffer, then hands body bytes out by slicing
    # that buffer twice and deleting the slice, and httpcore copies what it gets into bytes
    # once more: four fresh copies of every MiB of a fill on regd's one event-loop thread.
    # A read arriving at an empty buffer is kept as it is (bytes, which nobody can change),
    # a body read holding the whole remainder is handed out as it is, and httpcore's
    # bytes() of bytes is the same object: the network's read reaches the fill uncopied.
    # The buffer becomes a bytearray again before anything edits it in place.
    _append = ReceiveBuffer.__iadd__
    _extract = ReceiveBuffer._extract
    _extract_at_most = ReceiveBuffer.maybe_extract_at_most

    def _editable(buffer: ReceiveBuffer) -> None:
        data: bytes | bytearray = buffer._data
        if not isinstance(data, bytearray):
            buffer._data = bytearray(data)

    def _keep_or_append(self: ReceiveBuffer, byteslike: bytes | bytearray) -> ReceiveBuffer:
        if not self._data and type(byteslike) is bytes:
            self._data = byteslike  # type: ignore[assignment]
            return self
        _editable(self)
        return _append(self, byteslike)

    def _extract_editable(self: ReceiveBuffer, count: int) -> bytearray:
        _editable(self)
        return _extract(self, count)

    def _take_at_most(self: ReceiveBuffer, count: int) -> bytearray | None:
        data = self._data
        if data and count >= len(data):
            self._data = bytearray()
            self._next_line_search = 0
            self._multiple_lines_search = 0
            return data
        _editable(self)
        return _extract_at_most(self, count)

    ReceiveBuffer.__iadd__ = _keep_or_append  # type: ignore[method-assign]
    ReceiveBuffer._extract = _extract_editable  # type: ignore[method-assign]
    ReceiveBuffer.maybe_extract_at_most = _take_at_most  # type: ignore[method-assign]


class _Configured:
    """The credentials of the mirror's configuration, for its one upstream host."""

    def __init__(self, mirror: MirrorConfig) -> None:
        self._credentials = (
            Credentials(mirror.username, mirror.password)
            if mirror.username is not None and mirror.password is not None
            else None
        )

    def get(self, host: str) -> Credentials | None:
        return self._credentials


class Upstream:
    """Manifests and blobs of the upstream registry; failures become `UpstreamError`,
    except "not there", which is None (manifests, sizes) or NotFoundError (blob reads)."""

    def __init__(self, mirror: MirrorConfig, clock: Clock) -> None:
        self.mirror = mirror
        parts = urlsplit(mirror.upstream)
        self.host = parts.netloc
        self.client = RegistryClient(
            credentials=_Configured(mirror),
            plain_http=parts.scheme == "http",
            ca_cert=None if mirror.ca_cert is None else str(mirror.ca_cert),
            timeout=mirror.timeout,
            user_agent="regd/0.1",
            clock=clock,
        )

    def failure(self, cause: str) -> UpstreamError:
        return UpstreamError(self.mirror.prefix, self.mirror.upstream, cause)

    def _ref(
        self, repository: str, tag: str | None = None, digest: Digest | None = None
    ) -> Reference:
        return Reference(self.host, repository, tag, digest)

    async def head_manifest(self, repository: str, reference: str) -> ManifestHead | None:
        try:
            return await self.client.head_manifest(self._reference(repository, reference))
        except NotFoundError:
            return None
        except ClientError as exc:
            raise self.failure(str(exc)) from exc

    async def get_manifest(self, repository: str, reference: str) -> FetchedManifest | None:
        try:
            return await self.client.get_manifest(self._reference(repository, reference))
        except NotFoundError:
            return None
        except ClientError as exc:
            raise self.failure(str(exc)) from exc

    async def referrers(self, repository: str, subject: Digest) -> tuple[Descriptor, ...]:
        """The manifests referring to `subject` upstream, all artifact types: by the
        referrers API, or, where the upstream answers it with 404, the tag schema's index."""
        try:
            found = await self.client.referrers(self._ref(repository, digest=subject))
        except NotFoundError:
            return ()
        except ClientError as exc:
            raise self.failure(str(exc)) from exc
        return found.descriptors

    async def blob_size(self, repository: str, digest: Digest) -> int | None:
        try:
            return await self.client.blob_size(self._ref(repository, digest=digest))
        except ClientError as exc:
            raise self.failure(str(exc)) from exc

    @asynccontextmanager
    async def open_blob(self, repository: str, digest: Digest) -> AsyncIterator[BlobStream]:
        """The blob's bytes as they arrive, unchecked: the writer to storage checks them."""
        try:
            async with self.client.open_blob(
                self._ref(repository, digest=digest), verify=False
            ) as stream:
                yield stream
        except ClientError as exc:
            raise self.failure(str(exc)) from exc

    def _reference(self, repository: str, reference: str) -> Reference:
        if ":" in reference:
            return self._ref(repository, digest=Digest.parse(reference))
        return self._ref(repository, tag=reference)

    async def aclose(self) -> None:
        await self.client.aclose()
