"""The registry's domain: what a push, a pull or a deletion means. No HTTP, no SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from regd.clock import SYSTEM_CLOCK, Clock
from regd.config import MirrorConfig
from regd.metadata import MetadataStore
from regd.mirror import Mirrors, Routes
from regd.registry.adoption import Adoption
from regd.registry.blobs import Blobs, BlobStat, BlobStream
from regd.registry.browse import Browsing
from regd.registry.integrity import Integrity
from regd.registry.lifecycle import Lifecycle, Plan, Policy, SweepInProgress
from regd.registry.listings import Listings, Referrers, page_size
from regd.registry.maintenance import Maintenance, MaintenanceState
from regd.registry.manifests import MAX_MANIFEST_SIZE, Manifests, PushedManifest
from regd.registry.quotas import Quota, Quotas
from regd.registry.retention import Repositories, RetentionPolicy
from regd.registry.uploads import MAX_UPLOADS_PER_REPOSITORY, Uploads, UploadStatus
from regd.storage import StorageDriver


@dataclass(frozen=True)
class Registry:
    storage: StorageDriver
    metadata: MetadataStore
    blobs: Blobs
    uploads: Uploads
    manifests: Manifests
    listings: Listings
    lifecycle: Lifecycle
    repositories: Repositories
    integrity: Integrity
    adoption: Adoption
    browsing: Browsing
    quotas: Quotas
    maintenance: Maintenance
    # The pull-through caches; None when no `[[mirror]]` is configured.
    mirrors: Mirrors | None = None

    @classmethod
    def create(
        cls,
        storage: StorageDriver,
        metadata: MetadataStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_uploads_per_repository: int = MAX_UPLOADS_PER_REPOSITORY,
        mirrors: Sequence[MirrorConfig] = (),
        quotas: Sequence[Quota] = (),
        quota_refresh: float = 5.0,
        maintenance_refresh: float = 2.0,
    ) -> Registry:
        """The registry over `storage` and `metadata`. Decisions that compare wall-clock
        times (grace periods, retention ages) read `clock`; give the store the same one."""
        limits = Quotas(metadata, quotas, refresh=quota_refresh)
        routes = Routes(mirrors)
        uploads = Uploads(
            storage,
            metadata,
            max_uploads_per_repository=max_uploads_per_repository,
            refuse_push=routes.refuse_push if routes else None,
            quotas=limits,
        )
        blobs = Blobs(storage, metadata)
        cache = None
        if routes:
            cache = Mirrors(routes, metadata, clock, uploads.store, blobs.open_stored)
            blobs = Blobs(storage, metadata, cache)
        manifests = Manifests(metadata, cache, limits)
        return cls(
            storage=storage,
            metadata=metadata,
            blobs=blobs,
            uploads=uploads,
            manifests=manifests,
            listings=Listings(metadata, cache),
            lifecycle=Lifecycle(storage, metadata, clock, cache),
            repositories=Repositories(metadata, clock),
            integrity=Integrity(storage, metadata, clock),
            adoption=Adoption(storage, metadata, manifests),
            browsing=Browsing(metadata, manifests, blobs),
            quotas=limits,
            maintenance=Maintenance(metadata, clock, refresh=maintenance_refresh),
            mirrors=cache,
        )

    @property
    def pull_events(self) -> bool:
        """Whether any event endpoint wants to hear of pulls."""
        return self.metadata.event_routing.pulls

    @property
    def fill_events(self) -> bool:
        """Whether a mirror is configured and any event endpoint wants to hear of its fills."""
        return self.mirrors is not None and self.metadata.event_routing.fills

    async def aclose(self) -> None:
        await self.metadata.aclose()


__all__ = [
    "MAX_MANIFEST_SIZE",
    "MAX_UPLOADS_PER_REPOSITORY",
    "Adoption",
    "BlobStat",
    "BlobStream",
    "Blobs",
    "Browsing",
    "Integrity",
    "Lifecycle",
    "Listings",
    "Maintenance",
    "MaintenanceState",
    "Manifests",
    "Mirrors",
    "Plan",
    "Policy",
    "PushedManifest",
    "Quota",
    "Quotas",
    "Referrers",
    "Registry",
    "Repositories",
    "RetentionPolicy",
    "SweepInProgress",
    "UploadStatus",
    "Uploads",
    "page_size",
]
