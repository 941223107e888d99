"""Manifests and referrers: HEAD, GET, PUT and DELETE of manifests, and the referrers API
with the spec's tag-schema fallback for registries that lack it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from regd.client.errors import (
    DigestMismatchError,
    NotFoundError,
    ProtocolError,
    ResponseError,
    UnsupportedError,
)
from regd.client.transport import (
    Transport,
    error_from,
    need_digest,
    need_host,
    next_link,
    pull_scope,
    push_scope,
)
from regd.oci import mediatypes as mt
from regd.oci.digest import Digest, DigestError
from regd.oci.manifest import Descriptor, Manifest, ManifestError, parse_manifest
from regd.oci.reference import Reference

# Registries must accept manifests of 4 MiB; reading a little more tolerates generous ones
# while still refusing to buffer something that is plainly not a manifest.
MANIFEST_READ_LIMIT = 8 * 1024 * 1024

MANIFEST_ACCEPT = ", ".join(
    [mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST]
)

ReferrersSource = Literal["api", "tag-schema"]


@dataclass(frozen=True, slots=True)
class ManifestHead:
    """What a HEAD on a manifest tells: enough to list and compare without the body."""

    digest: Digest
    media_type: str
    size: int
    last_modified: datetime | None = None


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: Digest

    def parse(self) -> Manifest:
        try:
            return parse_manifest(self.data, self.media_type)
        except ManifestError as exc:
            raise ProtocolError(f"manifest {self.digest} cannot be read: {exc}") from None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: Digest
    # The registry answered `OCI-Subject`: it indexes referrers itself.
    subject_indexed: bool


@dataclass(frozen=True, slots=True)
class Referrers:
    descriptors: tuple[Descriptor, ...]
    # "api": the registry's referrers endpoint; "tag-schema": the `<alg>-<hex>` tag that
    # clients maintain for registries without that endpoint.
    source: ReferrersSource


def referrers_tag(digest: Digest) -> str:
    """The fallback tag the distribution spec defines for a subject's referrers index."""
    return f"{digest.algorithm}-{digest.hex}"[:128]


def _base_media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _header_digest(response: httpx.Response) -> Digest | None:
    raw = response.headers.get("Docker-Content-Digest")
    if not raw:
        return None
    try:
        return Digest.parse(raw.strip())
    except DigestError:
        return None


class ManifestOps(Transport):
    """Manifests by tag or digest, and the referrers of a subject."""

    def _manifest_url(self, ref: Reference, identifier: str | None = None) -> str:
        host = need_host(ref)
        return self._url(host, f"/v2/{ref.repository}/manifests/{identifier or ref.identifier}")

    async def head_manifest(self, ref: Reference) -> ManifestHead | None:
        """Digest, media type and size of a manifest; None when it does not exist."""
        host = need_host(ref)
        url = self._manifest_url(ref)
        response = await self._send(
            "HEAD", host, url, (pull_scope(ref.repository),), headers={"Accept": MANIFEST_ACCEPT}
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise error_from(response, "HEAD", url)
        digest = _header_digest(response)
        length = response.headers.get("Content-Length", "")
        media_type = _base_media_type(response.headers.get("Content-Type"))
        if digest is None or not length.isdigit() or media_type in ("", "application/json"):
            # Some registries leave headers off HEAD; the body tells everything.
            fetched = await self.get_manifest(ref)
            return ManifestHead(fetched.digest, fetched.media_type, len(fetched.data))
        return ManifestHead(digest, media_type, int(length), _last_modified(response))

    async def get_manifest(self, ref: Reference) -> FetchedManifest:
        host = need_host(ref)
        url = self._manifest_url(ref)
        response = await self._call(
            "GET",
            host,
            url,
            (pull_scope(ref.repository),),
            headers={"Accept": MANIFEST_ACCEPT},
            stream=True,
        )
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > MANIFEST_READ_LIMIT:
                    raise ProtocolError(f"GET {url}: manifest larger than {MANIFEST_READ_LIMIT}")
        finally:
            await response.aclose()
        data = bytes(body)
        algorithm = ref.digest.algorithm if ref.digest else "sha256"
        digest = Digest.of(data, algorithm)
        if ref.digest is not None and digest != ref.digest:
            raise DigestMismatchError(f"GET {url}", str(ref.digest), str(digest))
        media_type = _base_media_type(response.headers.get("Content-Type"))
        if media_type not in mt.MANIFESTS:
            # Generic content types: trust the document's own mediaType field.
            try:
                declared = json.loads(data).get("mediaType")
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                declared = None
            if isinstance(declared, str) and declared:
                media_type = declared
        return FetchedManifest(data, media_type, digest)

    async def put_manifest(
        self,
        ref: Reference,
        data: bytes,
        media_type: str,
        *,
        maintain_referrers_tag: bool = True,
    ) -> PushedManifest:
        """PUT a manifest by tag or digest, byte for byte.

        A manifest with a `subject` pushed to a registry that does not index referrers
        itself (no `OCI-Subject` answer) is also added to the subject's fallback tag,
        as the distribution spec asks clients to do.
        """
        host = need_host(ref)
        url = self._manifest_url(ref)
        digest = Digest.of(data, ref.digest.algorithm if ref.digest else "sha256")
        response = await self._call(
            "PUT",
            host,
            url,
            (push_scope(ref.repository),),
            ok=(200, 201, 202, 204),
            headers={"Content-Type": media_type},
            content=data,
        )
        answered = _header_digest(response)
        if answered is not None and answered.algorithm == digest.algorithm and answered != digest:
            raise DigestMismatchError(f"PUT {url}", str(digest), str(answered))
        indexed = "OCI-Subject" in response.headers
        if maintain_referrers_tag and not indexed and b'"subject"' in data:
            manifest = parse_manifest(data, media_type)
            if manifest.subject is not None:
                descriptor = Descriptor(
                    media_type=manifest.media_type,
                    digest=digest,
                    size=len(data),
                    artifact_type=manifest.effective_artifact_type,
                    annotations=manifest.annotations,
                )
                await self._add_to_referrers_tag(ref, manifest.subject.digest, descriptor)
        return PushedManifest(digest, indexed)

    async def _add_to_referrers_tag(
        self, ref: Reference, subject: Digest, descriptor: Descriptor
    ) -> None:
        tag_ref = Reference(ref.host, ref.repository, referrers_tag(subject))
        entries: list[dict[str, Any]] = []
        try:
            existing = await self.get_manifest(tag_ref)
            doc = existing.json()
            if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
                entries = [m for m in doc["manifests"] if isinstance(m, dict)]
        except NotFoundError:
            pass
        if any(m.get("digest") == str(descriptor.digest) for m in entries):
            return
        entries.append(descriptor.to_json())
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
        await self.put_manifest(
            tag_ref,
            json.dumps(index, separators=(",", ":")).encode(),
            mt.OCI_INDEX,
            maintain_referrers_tag=False,
        )

    async def delete_manifest(self, ref: Reference) -> None:
        """DELETE by digest (the manifest and all its tags) or by tag (only that tag)."""
        host = need_host(ref)
        url = self._manifest_url(ref)
        scopes = (f"repository:{ref.repository}:delete", pull_scope(ref.repository))
        try:
            await self._call("DELETE", host, url, scopes, ok=(200, 202, 204))
        except ResponseError as exc:
            # Distribution cannot drop a single tag: it answers 400 DIGEST_INVALID (2.8)
            # or 405 UNSUPPORTED. Name that for what it is.
            if ref.digest is None and (
                isinstance(exc, UnsupportedError)
                or (exc.status == 400 and exc.code in ("DIGEST_INVALID", "UNSUPPORTED"))
            ):
                raise UnsupportedError(
                    "DELETE",
                    exc.url,
                    exc.status,
                    exc.code,
                    "this registry cannot delete a tag on its own",
                ) from exc
            raise

    # -- referrers ---------------------------------------------------------------------

    async def referrers(self, ref: Reference, *, artifact_type: str | None = None) -> Referrers:
        """Manifests whose `subject` is `ref.digest`, by the API or its fallback tag."""
        host = need_host(ref)
        subject = need_digest(ref)
        url = self._url(host, f"/v2/{ref.repository}/referrers/{subject}")
        params = {"artifactType": artifact_type} if artifact_type else None
        found: list[Descriptor] = []
        filtered = False
        first = True
        while True:
            response = await self._send(
                "GET",
                host,
                url,
                (pull_scope(ref.repository),),
                headers={"Accept": mt.OCI_INDEX},
                params=params,
            )
            if first and response.status_code in (404, 405):
                return await self._referrers_from_tag(ref, subject, artifact_type)
            if response.status_code != 200:
                raise error_from(response, "GET", url)
            first = False
            filtered = filtered or "OCI-Filters-Applied" in response.headers
            try:
                found.extend(parse_manifest(response.content, mt.OCI_INDEX).manifests)
            except ManifestError as exc:
                raise ProtocolError(f"GET {url}: referrers answer is not an index: {exc}") from None
            link = next_link(response)
            if not link:
                break
            url, params = str(response.request.url.join(link)), None
        if artifact_type and not filtered:
            found = [d for d in found if d.artifact_type == artifact_type]
        return Referrers(tuple(found), "api")

    async def _referrers_from_tag(
        self, ref: Reference, subject: Digest, artifact_type: str | None
    ) -> Referrers:
        tag_ref = Reference(ref.host, ref.repository, referrers_tag(subject))
        try:
            index = (await self.get_manifest(tag_ref)).parse()
        except NotFoundError:
            return Referrers((), "tag-schema")
        found = index.manifests
        if artifact_type:
            found = tuple(d for d in found if d.artifact_type == artifact_type)
        return Referrers(found, "tag-schema")


def _last_modified(response: httpx.Response) -> datetime | None:
    value = response.headers.get("Last-Modified")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
