"""Registry metadata as SQL rows (SQLite or PostgreSQL)."""

# accounts registers its tables on the schema's MetaData, so create_schema makes them too.
from regd.metadata import accounts as accounts
from regd.metadata import mirror_cache as mirror_cache
from regd.metadata import revocations as revocations
from regd.metadata import settings as settings
from regd.metadata.engine import normalize_url, sqlite_url
from regd.metadata.outbox import Origin, Target
from regd.metadata.records import (
    ManifestInfo,
    MetadataError,
    MissingReferences,
    NewManifest,
    Page,
    TagInfo,
    UploadInfo,
)
from regd.metadata.store import MetadataStore

__all__ = [
    "ManifestInfo",
    "MetadataError",
    "MetadataStore",
    "MissingReferences",
    "NewManifest",
    "Origin",
    "Page",
    "TagInfo",
    "Target",
    "UploadInfo",
    "normalize_url",
    "sqlite_url",
]
