"""Registry metadata as SQL rows (SQLite or PostgreSQL)."""

from regd.metadata.store import (
    ManifestInfo,
    MetadataError,
    MetadataStore,
    MissingReferences,
    NewManifest,
    Page,
    TagInfo,
    UploadInfo,
    normalize_url,
    sqlite_url,
)

__all__ = [
    "ManifestInfo",
    "MetadataError",
    "MetadataStore",
    "MissingReferences",
    "NewManifest",
    "Page",
    "TagInfo",
    "UploadInfo",
    "normalize_url",
    "sqlite_url",
]
