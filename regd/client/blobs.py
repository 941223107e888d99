"""Blobs: HEAD, streamed GET checked against the digest, mount, upload and DELETE."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx

from regd.client.errors import ConnectError, DigestMismatchError, ProtocolError
from regd.client.transport import (
    Scope,
    Transport,
    error_from,
    need_digest,
    need_host,
    pull_scope,
    push_scope,
    without_query,
)
from regd.oci.digest import Digest, Hasher
from regd.oci.reference import Reference

# Below this, a blob goes up in one PUT; above, it is streamed through a PATCH.
MONOLITHIC_LIMIT = 4 * 1024 * 1024


class BlobStream:
    """The body of a blob GET, read chunk by chunk and checked against its digest."""

    def __init__(self, response: httpx.Response, url: str, digest: Digest, *, verify: bool) -> None:
        self._response = response
        self._url = url
        self.digest = digest
        self._verify = verify
        length = response.headers.get("Content-Length")
        self.size: int | None = int(length) if length and length.isdigit() else None

    async def chunks(self) -> AsyncIterator[bytes]:
        hasher = Hasher(self.digest.algorithm) if self._verify else None
        received = 0
        try:
            async for chunk in self._response.aiter_raw():
                received += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                yield chunk
        except httpx.TransportError as exc:
            raise ConnectError(self._url, f"transfer interrupted: {exc}") from exc
        if self.size is not None and received != self.size:
            raise ProtocolError(
                f"GET {self._url}: received {received} bytes of {self.size} announced"
            )
        if hasher is not None:
            actual = hasher.digest()
            if actual != self.digest:
                raise DigestMismatchError(f"GET {self._url}", str(self.digest), str(actual))


class BlobOps(Transport):
    """Blobs: existence and size, streamed reads, cross-repository mounts, uploads."""

    def _blob_url(self, ref: Reference) -> str:
        return self._url(need_host(ref), f"/v2/{ref.repository}/blobs/{need_digest(ref)}")

    async def blob_size(self, ref: Reference) -> int | None:
        """HEAD a blob: its size, or None when the repository does not have it."""
        host = need_host(ref)
        url = self._blob_url(ref)
        response = await self._send(
            "HEAD", host, url, (pull_scope(ref.repository),), follow_redirects=True
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise error_from(response, "HEAD", url)
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else 0

    @asynccontextmanager
    async def open_blob(self, ref: Reference, *, verify: bool = True) -> AsyncIterator[BlobStream]:
        """Stream a blob; with `verify`, iterating to the end checks its digest and size."""
        host = need_host(ref)
        url = self._blob_url(ref)
        response = await self._call(
            "GET", host, url, (pull_scope(ref.repository),), stream=True, follow_redirects=True
        )
        try:
            yield BlobStream(response, url, need_digest(ref), verify=verify)
        finally:
            await response.aclose()

    async def get_blob(self, ref: Reference, *, limit: int = 64 * 1024 * 1024) -> bytes:
        """A small blob (a config, a signature) read whole, digest verified."""
        body = bytearray()
        async with self.open_blob(ref) as stream:
            async for chunk in stream.chunks():
                body.extend(chunk)
                if len(body) > limit:
                    raise ProtocolError(f"blob {ref.digest} is larger than {limit} bytes")
        return bytes(body)

    async def mount_blob(self, ref: Reference, from_repository: str) -> bool:
        """Ask the registry to link a blob from another of its repositories."""
        host = need_host(ref)
        digest = need_digest(ref)
        url = self._url(host, f"/v2/{ref.repository}/blobs/uploads/")
        response = await self._call(
            "POST",
            host,
            url,
            (push_scope(ref.repository), pull_scope(from_repository)),
            ok=(201, 202),
            params={"mount": str(digest), "from": from_repository},
        )
        if response.status_code == 201:
            return True
        # The registry opened an ordinary upload instead; nobody will use it.
        location = response.headers.get("Location")
        if location:
            upload = str(response.request.url.join(location))
            with suppress(ConnectError):
                await (
                    await self._send("DELETE", host, upload, (push_scope(ref.repository),))
                ).aclose()
        return False

    async def push_blob(
        self,
        ref: Reference,
        content: bytes | AsyncIterable[bytes],
        size: int | None = None,
    ) -> None:
        """Upload a blob to `ref.repository` under `ref.digest`.

        Bytes up to MONOLITHIC_LIMIT go in a single PUT; anything else is streamed in one
        PATCH, hashed on the way, and committed only when it hashes to `ref.digest`.
        """
        host = need_host(ref)
        digest = need_digest(ref)
        scopes = (push_scope(ref.repository),)
        start = self._url(host, f"/v2/{ref.repository}/blobs/uploads/")
        response = await self._call("POST", host, start, scopes, ok=(202,))
        location = _location(response)

        if isinstance(content, bytes) and len(content) <= MONOLITHIC_LIMIT:
            actual = Digest.of(content, digest.algorithm)
            if actual != digest:
                await self._cancel_upload(host, location, scopes)
                raise DigestMismatchError(f"blob for {ref}", str(digest), str(actual))
            await self._call(
                "PUT",
                host,
                str(httpx.URL(location).copy_merge_params({"digest": str(digest)})),
                scopes,
                ok=(201, 204),
                headers={"Content-Type": "application/octet-stream"},
                content=content,
            )
            return

        hasher = Hasher(digest.algorithm)
        source: AsyncIterable[bytes] = (
            _one_chunk(content) if isinstance(content, bytes) else content
        )

        async def hashed() -> AsyncIterator[bytes]:
            async for chunk in source:
                hasher.update(chunk)
                yield chunk

        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        try:
            response = await self._call(
                "PATCH", host, location, scopes, ok=(202, 204), headers=headers, content=hashed()
            )
        except Exception:
            # Best effort: a registry that cannot cancel will expire the session itself.
            with suppress(Exception):
                await self._cancel_upload(host, location, scopes)
            raise
        location = _location(response, default=location)
        actual = hasher.digest()
        if actual != digest:
            await self._cancel_upload(host, location, scopes)
            raise DigestMismatchError(f"blob for {ref}", str(digest), str(actual))
        if size is not None and hasher.size != size:
            await self._cancel_upload(host, location, scopes)
            raise ProtocolError(f"blob {digest}: {hasher.size} bytes sent, {size} expected")
        await self._call(
            "PUT",
            host,
            str(httpx.URL(location).copy_merge_params({"digest": str(digest)})),
            scopes,
            ok=(201, 204),
        )

    async def _cancel_upload(self, host: str, location: str, scopes: tuple[Scope, ...]) -> None:
        try:
            response = await self._send("DELETE", host, location, scopes)
            await response.aclose()
        except ConnectError:
            pass

    async def delete_blob(self, ref: Reference) -> None:
        host = need_host(ref)
        scopes = (f"repository:{ref.repository}:delete", pull_scope(ref.repository))
        await self._call("DELETE", host, self._blob_url(ref), scopes, ok=(200, 202, 204))


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _location(response: httpx.Response, default: str | None = None) -> str:
    value = response.headers.get("Location")
    if not value:
        if default is not None:
            return default
        raise ProtocolError(
            f"{response.request.method} {without_query(response.request.url)}: "
            "upload answer has no Location"
        )
    return str(response.request.url.join(value))
