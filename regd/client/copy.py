"""Copying images, indexes and artifacts between repositories of any registries.

Manifests are pushed with the exact bytes that were pulled, so every digest survives.
Blobs flow from the source GET straight into the destination upload, a chunk at a time;
the destination is asked first (HEAD) so whatever already arrived is never sent again.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from regd.client.blobs import MONOLITHIC_LIMIT
from regd.client.errors import ClientError
from regd.client.registry import RegistryClient
from regd.client.tasks import task_group
from regd.oci import mediatypes as mt
from regd.oci.digest import Digest
from regd.oci.manifest import Descriptor
from regd.oci.reference import Reference

BlobOutcome = Literal["copied", "skipped", "mounted"]


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, platform: dict[str, Any] | None) -> bool:
        if not platform:
            return False
        if platform.get("os") != self.os or platform.get("architecture") != self.architecture:
            return False
        return self.variant is None or platform.get("variant") == self.variant

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


class CopyProgress(Protocol):
    """Receives what a copy is doing; the CLI draws it, tests may record it."""

    def blob_started(self, digest: Digest, size: int) -> None: ...

    def blob_advanced(self, digest: Digest, nbytes: int) -> None: ...

    def blob_finished(self, digest: Digest, size: int, outcome: BlobOutcome) -> None: ...


@dataclass(slots=True)
class CopyReport:
    source: str
    destination: str
    digest: Digest | None = None
    media_type: str = ""
    source_digest: Digest | None = None
    # Set when --platform picked one manifest out of this index.
    index_digest: Digest | None = None
    filtered: bool = False
    platforms: list[str] = field(default_factory=list)
    manifests: int = 0
    referrers: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "digest": str(self.digest) if self.digest else None,
            "sourceDigest": str(self.source_digest) if self.source_digest else None,
            "indexDigest": str(self.index_digest) if self.index_digest else None,
            "mediaType": self.media_type,
            "filtered": self.filtered,
            "platforms": self.platforms,
            "manifests": self.manifests,
            "referrers": self.referrers,
            "blobs": {
                "copied": self.blobs_copied,
                "skipped": self.blobs_skipped,
                "mounted": self.blobs_mounted,
            },
            "bytesCopied": self.bytes_copied,
        }


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """How a copy goes: which platforms of an index, whether a filtered index is kept as a
    new index, whether referrers follow their subject, how many blobs move at once, and who
    hears of each blob's progress."""

    platforms: Sequence[Platform] = ()
    keep_index: bool = False
    referrers: bool = False
    jobs: int = 4
    progress: CopyProgress | None = None


class _Copier:
    def __init__(
        self, client: RegistryClient, src: Reference, dst: Reference, options: CopyOptions
    ) -> None:
        if len(options.platforms) > 1 and not options.keep_index:
            raise ValueError("several platforms can only be copied as an index: keep_index")
        self.client = client
        self.keep_index = options.keep_index
        self.src = Reference(src.host, src.repository)
        self.dst = Reference(dst.host, dst.repository)
        self.platforms = tuple(options.platforms)
        self.referrers = options.referrers
        self.limiter = trio.CapacityLimiter(max(1, options.jobs))
        self.progress = options.progress
        # One transfer per digest even when several manifests share a blob.
        self._blobs: dict[Digest, trio.Event] = {}
        self._manifests: dict[Digest, trio.Event] = {}
        self.report = CopyReport("", "")

    @property
    def copied_manifests(self) -> set[Digest]:
        """Digests of every manifest this copier has pushed (or found already there)."""
        return set(self._manifests)

    def _src(self, identifier: str | Digest) -> Reference:
        if isinstance(identifier, Digest):
            return Reference(self.src.host, self.src.repository, None, identifier)
        return Reference(self.src.host, self.src.repository, identifier)

    def _dst(self, identifier: str | Digest) -> Reference:
        if isinstance(identifier, Digest):
            return Reference(self.dst.host, self.dst.repository, None, identifier)
        return Reference(self.dst.host, self.dst.repository, identifier)

    async def copy_top(self, source: Reference, tag: str | None) -> CopyReport:
        self.report = CopyReport(str(source), str(self._dst(tag) if tag else self.dst))
        src_ident: str | Digest = source.digest if source.digest else (source.tag or "latest")
        if self.platforms and not self.keep_index:
            src_ident = await self._pick_platform(src_ident)
        digest, media_type, filtered = await self._copy_manifest(src_ident, tag, top=True)
        self.report.digest = digest
        self.report.media_type = media_type
        self.report.filtered = filtered
        if tag is None:
            self.report.destination = str(self._dst(digest))
        return self.report

    async def _pick_platform(self, src_ident: str | Digest) -> str | Digest:
        """The digest of the index's manifest for the one wanted platform, as regclient
        and crane copy it: that manifest itself, its digest preserved."""
        fetched = await self.client.get_manifest(self._src(src_ident))
        manifest = fetched.parse()
        if not manifest.is_index:
            return src_ident
        wanted = self.platforms[0]
        for child in manifest.manifests:
            if wanted.matches(child.platform):
                self.report.index_digest = fetched.digest
                self.report.platforms = [platform_text(child.platform)]
                return child.digest
        raise ClientError(f"{self._src(src_ident)}: no manifest in the index matches {wanted}")

    async def _copy_manifest(
        self, src_ident: str | Digest, tag: str | None, *, top: bool
    ) -> tuple[Digest, str, bool]:
        fetched = await self.client.get_manifest(self._src(src_ident))
        manifest = fetched.parse()
        if top:
            self.report.source_digest = fetched.digest
        pending = self._manifests.get(fetched.digest)
        if pending is not None and tag is None:
            await pending.wait()
            return fetched.digest, fetched.media_type, False
        done = trio.Event()
        self._manifests.setdefault(fetched.digest, done)
        try:
            data, media_type, filtered = fetched.data, fetched.media_type, False
            present = await self.client.head_manifest(self._dst(fetched.digest))
            if manifest.is_index:
                children = list(manifest.manifests)
                if top and self.platforms and self.keep_index:
                    children = [
                        c for c in children if any(p.matches(c.platform) for p in self.platforms)
                    ]
                    if not children:
                        wanted = ", ".join(str(p) for p in self.platforms)
                        raise ClientError(
                            f"{self._src(src_ident)}: no manifest in the index matches {wanted}"
                        )
                    filtered = len(children) != len(manifest.manifests)
                    self.report.platforms = [platform_text(c.platform) for c in children]
                if filtered:
                    data = _filtered_index(fetched.json(), {c.digest for c in children})
                    present = None
                if present is None or self.referrers:
                    async with task_group() as nursery:
                        for child in children:
                            nursery.start_soon(self._copy_child, child)
            elif present is None:
                async with task_group() as nursery:
                    seen: set[Digest] = set()
                    for blob in manifest.blob_references():
                        if blob.digest not in seen:
                            seen.add(blob.digest)
                            nursery.start_soon(self._copy_blob, blob)
            pushed = await self.client.put_manifest(
                self._dst(tag) if tag else self._dst(Digest.of(data)), data, media_type
            )
            self.report.manifests += 1
            if self.referrers:
                await self._copy_referrers(fetched.digest)
            return pushed.digest, media_type, filtered
        finally:
            done.set()

    async def _copy_child(self, child: Descriptor) -> None:
        await self._copy_manifest(child.digest, None, top=False)

    async def _copy_referrers(self, subject: Digest) -> None:
        found = await self.client.referrers(self._src(subject))
        async with task_group() as nursery:
            for descriptor in found.descriptors:
                if descriptor.digest not in self._manifests:
                    self.report.referrers += 1
                    nursery.start_soon(self._copy_child, descriptor)

    async def _copy_blob(self, blob: Descriptor) -> None:
        pending = self._blobs.get(blob.digest)
        if pending is not None:
            await pending.wait()
            return
        done = self._blobs[blob.digest] = trio.Event()
        try:
            async with self.limiter:
                outcome = await self._transfer(blob)
        finally:
            done.set()
        if outcome == "copied":
            self.report.blobs_copied += 1
            self.report.bytes_copied += blob.size
        elif outcome == "mounted":
            self.report.blobs_mounted += 1
        else:
            self.report.blobs_skipped += 1
        if self.progress is not None:
            self.progress.blob_finished(blob.digest, blob.size, outcome)

    async def _transfer(self, blob: Descriptor) -> BlobOutcome:
        target = self._dst(blob.digest)
        if await self.client.blob_size(target) is not None:
            return "skipped"
        same_registry = self.src.host == self.dst.host
        if (
            same_registry
            and self.src.repository != self.dst.repository
            and await self.client.mount_blob(target, self.src.repository)
        ):
            return "mounted"
        if self.progress is not None:
            self.progress.blob_started(blob.digest, blob.size)
        async with self.client.open_blob(self._src(blob.digest), verify=False) as stream:
            if blob.size <= MONOLITHIC_LIMIT:
                body = bytearray()
                async for chunk in self._counted(blob.digest, stream.chunks()):
                    body.extend(chunk)
                    if len(body) > MONOLITHIC_LIMIT:
                        break
                if len(body) <= MONOLITHIC_LIMIT:
                    await self.client.push_blob(target, bytes(body), len(body))
                    return "copied"
                raise ClientError(
                    f"blob {blob.digest} is larger than the {blob.size} bytes its descriptor says"
                )
            await self.client.push_blob(
                target, self._counted(blob.digest, stream.chunks()), blob.size
            )
        return "copied"

    async def _counted(self, digest: Digest, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if self.progress is not None:
                self.progress.blob_advanced(digest, len(chunk))
            yield chunk


def platform_text(platform: dict[str, Any] | None) -> str:
    if not platform:
        return "unknown"
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    if platform.get("variant"):
        text += f"/{platform['variant']}"
    return text


def _filtered_index(doc: Any, keep: set[Digest]) -> bytes:
    """A new index with only the kept children, everything else as the source had it."""
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise ClientError("index has no manifests list")
    out = dict(doc)
    out["manifests"] = [
        m for m in doc["manifests"] if isinstance(m, dict) and _parse_or_none(m) in keep
    ]
    return json.dumps(out, indent=2).encode()


def _parse_or_none(entry: dict[str, Any]) -> Digest | None:
    try:
        return Digest.parse(str(entry.get("digest")))
    except ValueError:
        return None


def _destination_tag(src: Reference, dst: Reference) -> str | None:
    if dst.digest is not None:
        raise ValueError("a copy destination cannot name a digest: digests are preserved")
    return dst.tag or src.tag or (None if src.digest else "latest")


async def copy(
    client: RegistryClient, src: Reference, dst: Reference, options: CopyOptions | None = None
) -> CopyReport:
    """Copy what `src` names (image, index or artifact) to `dst`.

    Without a tag on `dst`, the source's tag is used; a source named only by digest is
    pushed by digest. With one of `options.platforms`, an index's manifest for that platform is
    copied itself, digest preserved. With `options.keep_index`, an index is instead reduced to the
    children matching those platforms and pushed as a new index (its digest then differs).
    """
    copier = _Copier(client, src, dst, options or CopyOptions())
    return await copier.copy_top(src, _destination_tag(src, dst))


async def copy_repository(
    client: RegistryClient, src: Reference, dst: Reference, options: CopyOptions | None = None
) -> list[CopyReport]:
    """Copy every tag of `src`'s repository to `dst`'s, one tag after another."""
    copier = _Copier(client, src, dst, options or CopyOptions())
    tags = await client.tags(src)
    fallback = [t for t in tags if _referrers_subject(t) is not None] if copier.referrers else []
    reports = []
    for tag in tags:
        if tag not in fallback:
            reports.append(await copier.copy_top(Reference(src.host, src.repository, tag), tag))
    for tag in fallback:
        # A registry without the referrers API keeps a subject's referrers in this tag.
        # When the subject was copied, its referrers went with it as referrers (and
        # put_manifest rebuilt the tag where the destination lacks the API), so the tag
        # itself is not copied as an ordinary one.
        subject = _referrers_subject(tag)
        if subject in copier.copied_manifests and await _is_index(
            client, Reference(src.host, src.repository, tag)
        ):
            continue
        reports.append(await copier.copy_top(Reference(src.host, src.repository, tag), tag))
    return reports


_REFERRERS_TAG = re.compile(r"sha256-([0-9a-f]{64})")


def _referrers_subject(tag: str) -> Digest | None:
    """The subject whose referrers-tag-schema fallback tag this is, if it is one."""
    match = _REFERRERS_TAG.fullmatch(tag)
    return Digest.parse(f"sha256:{match.group(1)}") if match else None


async def _is_index(client: RegistryClient, ref: Reference) -> bool:
    head = await client.head_manifest(ref)
    return head is not None and head.media_type == mt.OCI_INDEX
