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
from regd.oci.reference import Reference


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
