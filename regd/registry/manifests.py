"""Manifests and indexes: validated on push, served byte for byte."""

from __future__ import annotations

from dataclasses import dataclass

from regd.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestTooLarge,
    ManifestUnknown,
    NameUnknown,
)
from regd.metadata import (
    ManifestInfo,
    MetadataStore,
    MissingReferences,
    NewManifest,
    Origin,
    Target,
)
from regd.mirror import Mirrors
from regd.oci.digest import Digest
from regd.oci.manifest import ManifestError, parse_manifest
from regd.registry import validation
from regd.registry.quotas import Quotas

MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: Digest
    subject: Digest | None
    tags: tuple[str, ...]


class Manifests:
    def __init__(
        self,
        metadata: MetadataStore,
        mirrors: Mirrors | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self._metadata = metadata
        self._mirrors = mirrors
        self._quotas = quotas or Quotas(metadata)

    async def put(
        self,
        repository: str,
        reference: str,
        payload: bytes,
        content_type: str | None,
        extra_tags: tuple[str, ...] = (),
        *,
        origin: Origin | None = None,
    ) -> PushedManifest:
        name = validation.repository_name(repository)
        if self._mirrors is not None:
            self._mirrors.routes.refuse_push(name)
        if len(payload) > MAX_MANIFEST_SIZE:
            raise ManifestTooLarge(
                f"manifest is {len(payload)} bytes; the limit is {MAX_MANIFEST_SIZE}"
            )
        tags: list[str] = []
        if validation.is_digest_reference(reference):
            claimed = validation.digest(reference)
            digest = Digest.of(payload, claimed.algorithm)
            if digest != claimed:
                raise DigestInvalid(
                    f"manifest hashes to {digest}, not {claimed}",
                    {"expected": str(claimed), "actual": str(digest)},
                )
        else:
            tags.append(validation.tag(reference))
            digest = Digest.of(payload)
        tags.extend(validation.tag(t) for t in extra_tags if t not in tags)

        try:
            manifest = parse_manifest(payload, content_type)
        except ManifestError as exc:
            raise ManifestInvalid(str(exc)) from None

        blobs = [str(d.digest) for d in manifest.blob_references()]
        charges = await self._quotas.check_manifest(name, str(digest), len(payload), blobs)
        try:
            await self._metadata.put_manifest(
                name,
                NewManifest(
                    digest=str(digest),
                    media_type=manifest.media_type,
                    size=len(payload),
                    payload=payload,
                    artifact_type=manifest.effective_artifact_type,
                    subject=str(manifest.subject.digest) if manifest.subject else None,
                    annotations=manifest.annotations,
                    blobs=blobs,
                    children=[str(d.digest) for d in manifest.manifests],
                ),
                tags,
                origin=origin,
            )
        except MissingReferences as exc:
            missing = exc.blobs + exc.manifests
            what = "blobs" if exc.blobs else "manifests"
            raise ManifestBlobUnknown(
                f"manifest references {what} not in repository {name}: {', '.join(missing[:5])}",
                {"missing": missing},
            ) from None
        self._quotas.charge(charges)
        return PushedManifest(
            digest, manifest.subject.digest if manifest.subject else None, tuple(tags)
        )

    async def get(
        self,
        repository: str,
        reference: str,
        *,
        with_payload: bool,
        origin: Origin | None = None,
    ) -> ManifestInfo:
        name = validation.repository_name(repository)
        by_digest = validation.is_digest_reference(reference)
        key = str(validation.digest(reference)) if by_digest else validation.tag(reference)
        route = self._mirrors.find(name) if self._mirrors is not None else None
        info = None
        if route is None or not route.prefixed:
            # A namespace that takes pushes (the default mirror's too): what was pushed wins.
            if by_digest:
                info = await self._metadata.get_manifest(
                    name, digest=key, with_payload=with_payload
                )
            else:
                info = await self._metadata.get_manifest(name, tag=key, with_payload=with_payload)
        if info is None and route is not None and self._mirrors is not None:
            # The miss hook: the mirror answers from its cache or the upstream.
            info = await self._mirrors.manifest(
                route, key, by_digest=by_digest, with_payload=with_payload, origin=origin
            )
        if info is None:
            if route is not None:
                raise ManifestUnknown(
                    f"manifest {reference} is not in repository {name} nor upstream at "
                    f"{route.mirror.upstream}",
                    {"reference": reference},
                )
            await self._raise_unknown(name, reference)
        assert info is not None
        return info

    def note_pull(
        self, repository: str, reference: str, info: ManifestInfo, origin: Origin
    ) -> None:
        """Report a manifest served (best effort: see regd.metadata.outbox)."""
        tag = None if validation.is_digest_reference(reference) else reference
        target = Target(repository, info.digest, info.media_type, info.size, tag, "manifests")
        self._metadata.note_pull(target, origin)

    async def delete(
        self, repository: str, reference: str, *, origin: Origin | None = None
    ) -> None:
        """By digest: the manifest and all its tags. By tag: only that tag."""
        name = validation.repository_name(repository)
        if validation.is_digest_reference(reference):
            found = await self._metadata.delete_manifest(
                name, str(validation.digest(reference)), origin=origin
            )
        else:
            found = await self._metadata.delete_tag(name, validation.tag(reference), origin=origin)
        self._quotas.changed(name)
        if not found:
            await self._raise_unknown(name, reference)

    async def _raise_unknown(self, name: str, reference: str) -> None:
        if not await self._metadata.repository_exists(name):
            raise NameUnknown(f"repository {name} is not known", {"name": name})
        raise ManifestUnknown(
            f"manifest {reference} is not in repository {name}", {"reference": reference}
        )
