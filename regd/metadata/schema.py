"""Tables, in SQLAlchemy Core: one schema for SQLite and PostgreSQL.

Times are UNIX seconds as floats: portable across both databases and cheap to compare.
Names sort bytewise ("C" collation on PostgreSQL) because the API promises lexical order.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 1

metadata = MetaData()


def _name(length: int) -> String:
    return String(length).with_variant(String(length, collation="C"), "postgresql")


# SQLite only makes INTEGER PRIMARY KEY an alias of its rowid (and so autoincrementing).
_Id = BigInteger().with_variant(Integer(), "sqlite")

schema_info = Table(
    "regd_schema",
    metadata,
    Column("version", Integer, primary_key=True),
)

repositories = Table(
    "repositories",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("name", _name(255), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

# `linked_at` moves forward whenever the blob is uploaded again or mounted: garbage
# collection spares blobs linked within its grace period, referenced or not.
blobs = Table(
    "blobs",
    metadata,
    Column("digest", _name(150), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("linked_at", Float, nullable=False),
)

repository_blobs = Table(
    "repository_blobs",
    metadata,
    Column(
        "repository_id",
        _Id,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", _name(150), ForeignKey("blobs.digest"), primary_key=True),
    Column("created_at", Float, nullable=False),
    # Deleting a blob checks this foreign key; without the index that is a table scan.
    Index("repository_blobs_digest", "digest"),
)

manifests = Table(
    "manifests",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column(
        "repository_id",
        _Id,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("digest", _name(150), nullable=False),
    Column("media_type", Text, nullable=False),
    Column("artifact_type", Text),
    Column("size", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("subject", _name(150)),
    Column("annotations", Text),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("repository_id", "digest", name="manifests_repository_digest"),
    Index("manifests_subject", "repository_id", "subject"),
)

# What a manifest holds on to: blobs (config, layers) and child manifests (of an index).
# Garbage collection and deletion follow these rows, never the JSON.
manifest_blobs = Table(
    "manifest_blobs",
    metadata,
    Column("manifest_id", _Id, ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True),
    Column("digest", _name(150), primary_key=True),
    Index("manifest_blobs_digest", "digest"),
)

manifest_children = Table(
    "manifest_children",
    metadata,
    Column("manifest_id", _Id, ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True),
    Column("digest", _name(150), primary_key=True),
    Index("manifest_children_digest", "digest"),
)

tags = Table(
    "tags",
    metadata,
    Column(
        "repository_id",
        _Id,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", _name(128), primary_key=True),
    Column("manifest_id", _Id, ForeignKey("manifests.id", ondelete="CASCADE"), nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("tags_manifest", "manifest_id"),
    # The web UI pages through a repository's tags newest first (regd.metadata.browse).
    Index("tags_pushed", "repository_id", "updated_at", "name"),
)

# Named leases shared by all replicas: `blob:<digest>` while a blob's file is placed or
# removed, `gc` while a sweep runs. An expired lease may be taken over.
locks = Table(
    "locks",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(36), nullable=False),
    Column("until", Float, nullable=False),
)

# Upload sessions live here, not in one process's memory, so any replica can continue one.
# `lease` is held by the request currently appending, so two writers never interleave.
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("repository", _name(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("lease", String(36)),
    Column("lease_until", Float),
    # Opening a session counts the repository's open ones against a cap.
    Index("uploads_repository", "repository"),
)
