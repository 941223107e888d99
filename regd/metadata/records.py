"""What the metadata store hands back and takes in, and how it fails."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from regd.errors import BackendError
from regd.metadata import schema as t


class MetadataError(BackendError):
    """The database failed or its content is not what regd expects."""

    kind = "database"


class MissingReferences(MetadataError):
    """A manifest names blobs or manifests the repository does not have."""

    def __init__(self, blobs: Sequence[str], manifests: Sequence[str]) -> None:
        super().__init__(f"missing blobs {list(blobs)} and manifests {list(manifests)}")
        self.blobs = list(blobs)
        self.manifests = list(manifests)


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str]
    created_at: float
    payload: bytes | None = None
    # Why this answer may be older than the upstream's (a mirror whose upstream failed).
    stale: str | None = None


@dataclass(frozen=True, slots=True)
class NewManifest:
    digest: str
    media_type: str
    size: int
    payload: bytes
    artifact_type: str | None
    subject: str | None
    annotations: dict[str, str]
    blobs: Sequence[str] = ()
    children: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class UploadInfo:
    id: str
    repository: str
    size: int
    started_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class TagInfo:
    name: str
    digest: str
    media_type: str
    size: int
    updated_at: float


@dataclass(slots=True)
class Page:
    items: list[str] = field(default_factory=list)
    more: bool = False


# The columns an UploadInfo is built from, in its field order.
UPLOAD_COLUMNS = (
    t.uploads.c.id,
    t.uploads.c.repository,
    t.uploads.c.size,
    t.uploads.c.started_at,
    t.uploads.c.updated_at,
)
