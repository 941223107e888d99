"""The registry's domain: what a push, a pull or a deletion means. No HTTP, no SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from regd.clock import SYSTEM_CLOCK, Clock
from regd.metadata import MetadataStore
from regd.registry.adoption import Adoption
from regd.registry.blobs import Blobs, BlobStat, BlobStream
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
    quotas: Quotas
    maintenance: Maintenance

    @classmethod
    def create(
        cls,
        storage: StorageDriver,
        metadata: MetadataStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_uploads_per_repository: int = MAX_UPLOADS_PER_REPOSITORY,
        quotas: Sequence[Quota] = (),
        quota_refresh: float = 5.0,
        maintenance_refresh: float = 2.0,
    ) -> Registry:
        """The registry over `storage` and `metadata`. Decisions that compare wall-clock
        times (grace periods, retention ages) read `clock`; give the store the same one."""
        limits = Quotas(metadata, quotas, refresh=quota_refresh)
        manifests = Manifests(metadata, limits)
        return cls(
            storage=storage,
            metadata=metadata,
            blobs=Blobs(storage, metadata),
            uploads=Uploads(
                storage,
                metadata,
                max_uploads_per_repository=max_uploads_per_repository,
                quotas=limits,
            ),
            manifests=manifests,
            listings=Listings(metadata),
            lifecycle=Lifecycle(storage, metadata, clock),
            repositories=Repositories(metadata, clock),
            integrity=Integrity(storage, metadata, clock),
            adoption=Adoption(storage, metadata, manifests),
            quotas=limits,
            maintenance=Maintenance(metadata, clock, refresh=maintenance_refresh),
        )

    async def aclose(self) -> None:
        await self.metadata.aclose()


__all__ = [
    "MAX_MANIFEST_SIZE",
    "MAX_UPLOADS_PER_REPOSITORY",
    "Adoption",
    "BlobStat",
    "BlobStream",
    "Blobs",
    "Integrity",
    "Lifecycle",
    "Listings",
    "Maintenance",
    "MaintenanceState",
    "Manifests",
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
