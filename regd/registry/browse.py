"""What the web UI shows, read from the metadata: pages of tags with sizes, push times and
platforms; an image's manifest, layers and config; the state of garbage collection."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from regd.errors import BackendError, ManifestInvalid, NameUnknown, PaginationInvalid, RegistryError
from regd.metadata import MetadataStore, browse
from regd.oci import mediatypes as mt
from regd.oci.manifest import Descriptor, Manifest, ManifestError, parse_manifest
from regd.registry import validation
from regd.registry.blobs import Blobs
from regd.registry.manifests import Manifests

# An image config bigger than this is not shown (real ones are a few KiB).
MAX_CONFIG_BYTES = 1024 * 1024
MAX_TAG_PAGE = 500
# Tags are counted up to this many; a repository with more shows "more than" it.
TAG_COUNT_CAP = 10_000


@dataclass(frozen=True, slots=True)
class TagEntry:
    name: str
    digest: str
    media_type: str
    pushed_at: float
    size: int
    # "os/architecture[/variant]" of each image of an index; empty for a single image.
    platforms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TagListing:
    tags: list[TagEntry]
    # The cursor of the next page (pass it back as `after`), None on the last page.
    next_after: str | None


@dataclass(frozen=True, slots=True)
class ConfigSummary:
    os: str = ""
    architecture: str = ""
    created: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # Why the config could not be read or shown; empty when it was.
    problem: str = ""


@dataclass(frozen=True, slots=True)
class ImageView:
    repository: str
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str]
    manifest: Manifest
    config: ConfigSummary | None


def platform_name(platform: dict[str, Any] | None) -> str:
    if not platform:
        return "unknown"
    parts = [str(platform.get("os", "?")), str(platform.get("architecture", "?"))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def _platforms(payload: bytes | None) -> tuple[str, ...]:
    if payload is None:
        return ()
    try:
        manifest = parse_manifest(payload)
    except ManifestError:
        return ()
    # Attestation manifests that buildkit lists in an index are not platforms.
    return tuple(
        platform_name(d.platform)
        for d in manifest.manifests
        if d.platform and d.platform.get("os") != "unknown"
    )


def _encode_cursor(entry: TagEntry, by_time: bool) -> str:
    return f"{entry.pushed_at!r}~{entry.name}" if by_time else entry.name


def _decode_cursor(after: str | None, by_time: bool) -> tuple[float | None, str | None]:
    if not after:
        return None, None
    if not by_time:
        return None, validation.tag(after)
    when, sep, name = after.partition("~")
    try:
        moment = float(when)
    except ValueError:
        moment = float("nan")
    if not sep or moment != moment:
        raise PaginationInvalid(f"bad page cursor {after[:60]!r}")
    return moment, validation.tag(name)


def _strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def summarize_config(raw: bytes) -> ConfigSummary:
    try:
        doc = json.loads(raw)
    except ValueError:
        return ConfigSummary(problem="the config is not JSON")
    if not isinstance(doc, dict):
        return ConfigSummary(problem="the config is not a JSON object")
    inner = _mapping(doc.get("config"))
    labels = _mapping(inner.get("Labels"))
    history = doc.get("history")
    if not isinstance(history, list):
        history = []
    return ConfigSummary(
        os=str(doc.get("os", "")),
        architecture=str(doc.get("architecture", "")),
        created=str(doc.get("created", "")),
        entrypoint=_strings(inner.get("Entrypoint")),
        cmd=_strings(inner.get("Cmd")),
        env=_strings(inner.get("Env")),
        working_dir=str(inner.get("WorkingDir", "")),
        user=str(inner.get("User", "")),
        labels={str(k): str(v) for k, v in labels.items()},
        history=[h for h in history if isinstance(h, dict)],
    )


class Browsing:
    def __init__(self, metadata: MetadataStore, manifests: Manifests, blobs: Blobs) -> None:
        self._metadata = metadata
        self._manifests = manifests
        self._blobs = blobs

    async def tags(
        self, repository: str, *, by_time: bool, after: str | None, limit: int
    ) -> TagListing:
        """A page of `repository`'s tags by name, or newest push first."""
        name = validation.repository_name(repository)
        after_time, after_name = _decode_cursor(after, by_time)
        page = await browse.tag_page(
            self._metadata,
            name,
            by_time=by_time,
            after_name=after_name,
            after_time=after_time,
            limit=max(1, min(limit, MAX_TAG_PAGE)),
        )
        if page is None:
            raise NameUnknown(f"repository {name} is not known", {"name": name})
        entries = [
            TagEntry(
                row.name,
                row.digest,
                row.media_type,
                row.pushed_at,
                row.size,
                _platforms(row.payload),
            )
            for row in page.rows
        ]
        following = _encode_cursor(entries[-1], by_time) if page.more and entries else None
        return TagListing(entries, following)

    async def tag_count(self, repository: str, cap: int = TAG_COUNT_CAP) -> int:
        """The number of tags, or `cap` + 1 when there are more than `cap`."""
        name = validation.repository_name(repository)
        return await browse.tag_count(self._metadata, name, cap)

    async def image(self, repository: str, reference: str) -> ImageView:
        """The manifest `reference` names, parsed, and (for an image) its config's summary."""
        if not validation.is_digest_reference(reference):
            digest = await browse.tag_digest(
                self._metadata,
                validation.repository_name(repository),
                validation.tag(reference),
            )
            # An unknown tag: the lookup below says whether the repository exists.
            reference = digest or reference
        info = await self._manifests.get(repository, reference, with_payload=True)
        assert info.payload is not None
        try:
            manifest = parse_manifest(info.payload, info.media_type)
        except ManifestError as exc:
            raise ManifestInvalid(f"stored manifest {info.digest} cannot be read: {exc}") from None
        # An image's config type is what effective_artifact_type falls back to; only a
        # real artifact's type is worth showing.
        artifact_type = manifest.effective_artifact_type
        if artifact_type in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
            artifact_type = None
        config = None
        if manifest.config is not None and not manifest.is_index:
            config = await self._config(repository, manifest.config)
        return ImageView(
            repository=repository,
            digest=info.digest,
            media_type=info.media_type,
            size=info.size,
            artifact_type=artifact_type,
            annotations=manifest.annotations,
            manifest=manifest,
            config=config,
        )

    async def _config(self, repository: str, descriptor: Descriptor) -> ConfigSummary:
        if descriptor.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
            return ConfigSummary(problem=f"an artifact config ({descriptor.media_type})")
        if descriptor.size > MAX_CONFIG_BYTES:
            return ConfigSummary(problem=f"the config is too large to show ({descriptor.size} B)")
        try:
            blob = await self._blobs.stat(repository, str(descriptor.digest))
            stream = await self._blobs.open(blob, 0, min(blob.size, MAX_CONFIG_BYTES))
            chunks = [chunk async for chunk in stream]
        except (RegistryError, BackendError) as exc:
            return ConfigSummary(problem=f"the config cannot be read: {exc}")
        return summarize_config(b"".join(chunks))

    async def collection_running_until(self) -> float | None:
        """Until when a garbage collection sweep holds its lease; None when none runs."""
        held = await browse.lease_until(self._metadata, ["gc"])
        return held.get("gc")
