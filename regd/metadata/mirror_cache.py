"""What the pull-through caches hold: fetched manifests, tags and blobs, with the times
they were fetched, revalidated and last pulled.

Tables of their own, on the schema's MetaData (so `create_schema` makes them): a cached
manifest is kept here rather than in `manifests`, because it arrives before its blobs do
and the registry's tables insist that a manifest's blobs are present. Cached blobs are
stored and linked like pushed ones; their rows here say they are cache, which keeps them
from garbage collection until they are evicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    select,
    tuple_,
    update,
)

from regd.metadata.engine import insert_for
from regd.metadata.outbox import BLOB_MEDIA_TYPE, FILL, Origin, Target
from regd.metadata.rules import BATCH_SIZE
from regd.metadata.schema import metadata

if TYPE_CHECKING:
    from regd.metadata.store import MetadataStore


def _name(length: int) -> String:
    return String(length).with_variant(String(length, collation="C"), "postgresql")


mirror_manifests = Table(
    "mirror_manifests",
    metadata,
    Column("repository", _name(255), primary_key=True),
    Column("digest", _name(150), primary_key=True),
    Column("mirror", _name(255), nullable=False),
    Column("media_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("fetched_at", Float, nullable=False),
    Column("pulled_at", Float, nullable=False),
    Index("mirror_manifests_lru", "mirror", "pulled_at"),
)

# `checked_at`: when the upstream last confirmed the tag points at `digest`.
mirror_tags = Table(
    "mirror_tags",
    metadata,
    Column("repository", _name(255), primary_key=True),
    Column("tag", _name(128), primary_key=True),
    Column("mirror", _name(255), nullable=False),
    Column("digest", _name(150), nullable=False),
    Column("checked_at", Float, nullable=False),
)

mirror_blobs = Table(
    "mirror_blobs",
    metadata,
    Column("repository", _name(255), primary_key=True),
    Column("digest", _name(150), primary_key=True),
    Column("mirror", _name(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("fetched_at", Float, nullable=False),
    Column("pulled_at", Float, nullable=False),
    Index("mirror_blobs_lru", "mirror", "pulled_at"),
    Index("mirror_blobs_digest", "digest"),
)

# The upstream's referrers of `subject` (its referrers API, or the tag schema's index), as
# a JSON list of descriptors, unfiltered; `checked_at` as a tag's.
mirror_referrers = Table(
    "mirror_referrers",
    metadata,
    Column("repository", _name(255), primary_key=True),
    Column("subject", _name(150), primary_key=True),
    Column("mirror", _name(255), nullable=False),
    Column("descriptors", LargeBinary, nullable=False),
    Column("checked_at", Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class CachedReferrers:
    descriptors: bytes
    checked_at: float


@dataclass(frozen=True, slots=True)
class CachedManifest:
    repository: str
    digest: str
    media_type: str
    size: int
    fetched_at: float
    pulled_at: float
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class CachedTag:
    digest: str
    checked_at: float


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One manifest or blob a mirror holds, for listings and eviction."""

    mirror: str
    kind: str  # "manifest" or "blob"
    repository: str
    digest: str
    size: int
    fetched_at: float
    pulled_at: float
    tags: tuple[str, ...] = ()


async def get_manifest(
    store: MetadataStore, repository: str, digest: str, *, with_payload: bool
) -> CachedManifest | None:
    m = mirror_manifests
    columns: list[Any] = [m.c.media_type, m.c.size, m.c.fetched_at, m.c.pulled_at]
    if with_payload:
        columns.append(m.c.payload)
    stmt = select(*columns).where(m.c.repository == repository, m.c.digest == digest)

    def q(conn: Connection) -> CachedManifest | None:
        row = conn.execute(stmt).first()
        if row is None:
            return None
        return CachedManifest(
            repository,
            digest,
            row[0],
            row[1],
            row[2],
            row[3],
            bytes(row[4]) if with_payload else None,
        )

    return await store.run_query(q)


async def get_tag(store: MetadataStore, repository: str, tag: str) -> CachedTag | None:
    t = mirror_tags
    stmt = select(t.c.digest, t.c.checked_at).where(t.c.repository == repository, t.c.tag == tag)

    def q(conn: Connection) -> CachedTag | None:
        row = conn.execute(stmt).first()
        return None if row is None else CachedTag(row[0], row[1])

    return await store.run_query(q)


async def put_manifest(
    store: MetadataStore,
    mirror: str,
    repository: str,
    digest: str,
    media_type: str,
    payload: bytes,
    tag: str | None,
    origin: Origin | None = None,
) -> None:
    """Keep a fetched manifest (and point `tag` at it, checked now); with `origin`, the
    fill is reported to the event endpoints that want fills, in the same transaction."""
    now = store.clock.now()
    target = Target(repository, digest, media_type, len(payload), tag, "manifests")
    events = store._event_rows(origin, FILL, [target], now)

    def w(conn: Connection) -> None:
        ins = insert_for(store.dialect, mirror_manifests).values(
            repository=repository,
            digest=digest,
            mirror=mirror,
            media_type=media_type,
            size=len(payload),
            payload=payload,
            fetched_at=now,
            pulled_at=now,
        )
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=["repository", "digest"], set_={"pulled_at": now}
            )
        )
        if tag is not None:
            _set_tag(conn, store.dialect, mirror, repository, tag, digest, now)
        store._write_events(conn, events)

    await store.run_write(w)


def _set_tag(
    conn: Connection, dialect: str, mirror: str, repository: str, tag: str, digest: str, now: float
) -> None:
    ins = insert_for(dialect, mirror_tags).values(
        repository=repository, tag=tag, mirror=mirror, digest=digest, checked_at=now
    )
    conn.execute(
        ins.on_conflict_do_update(
            index_elements=["repository", "tag"],
            set_={"digest": digest, "checked_at": now, "mirror": mirror},
        )
    )


async def get_referrers(
    store: MetadataStore, repository: str, subject: str
) -> CachedReferrers | None:
    r = mirror_referrers
    stmt = select(r.c.descriptors, r.c.checked_at).where(
        r.c.repository == repository, r.c.subject == subject
    )

    def q(conn: Connection) -> CachedReferrers | None:
        row = conn.execute(stmt).first()
        return None if row is None else CachedReferrers(bytes(row[0]), row[1])

    return await store.run_query(q)


async def put_referrers(
    store: MetadataStore, mirror: str, repository: str, subject: str, descriptors: bytes
) -> None:
    """Keep the upstream's referrers list of `subject`, checked now."""
    now = store.clock.now()
    ins = insert_for(store.dialect, mirror_referrers).values(
        repository=repository,
        subject=subject,
        mirror=mirror,
        descriptors=descriptors,
        checked_at=now,
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["repository", "subject"],
        set_={"descriptors": descriptors, "checked_at": now},
    )
    await store.run_write(lambda conn: conn.execute(stmt))


async def confirm_tag(store: MetadataStore, repository: str, tag: str) -> None:
    """The upstream still points the tag at the cached digest: fresh again from now."""
    now = store.clock.now()
    t = mirror_tags
    stmt = update(t).where(t.c.repository == repository, t.c.tag == tag).values(checked_at=now)
    await store.run_write(lambda conn: conn.execute(stmt))


async def touch_manifest(store: MetadataStore, repository: str, digest: str) -> None:
    now = store.clock.now()
    m = mirror_manifests
    stmt = update(m).where(m.c.repository == repository, m.c.digest == digest).values(pulled_at=now)
    await store.run_write(lambda conn: conn.execute(stmt))


async def put_blob(
    store: MetadataStore,
    mirror: str,
    repository: str,
    digest: str,
    size: int,
    origin: Origin | None = None,
) -> None:
    """Note a stored blob as the mirror's; with `origin`, a fill from the upstream reported
    as `put_manifest` reports one."""
    now = store.clock.now()
    target = Target(repository, digest, BLOB_MEDIA_TYPE, size, kind="blobs")
    events = store._event_rows(origin, FILL, [target], now)

    def w(conn: Connection) -> None:
        ins = insert_for(store.dialect, mirror_blobs).values(
            repository=repository,
            digest=digest,
            mirror=mirror,
            size=size,
            fetched_at=now,
            pulled_at=now,
        )
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=["repository", "digest"], set_={"pulled_at": now}
            )
        )
        store._write_events(conn, events)

    await store.run_write(w)


async def touch_blob(store: MetadataStore, repository: str, digest: str) -> bool:
    """Note a pull of a cached blob; False when the blob is not cache (pushed)."""
    now = store.clock.now()
    b = mirror_blobs
    stmt = update(b).where(b.c.repository == repository, b.c.digest == digest).values(pulled_at=now)
    return bool(await store.run_write(lambda conn: conn.execute(stmt).rowcount))


async def cached_blob_digests(store: MetadataStore) -> set[str]:
    """Every blob some mirror holds: garbage collection keeps them."""
    stmt = select(mirror_blobs.c.digest).distinct()
    return set(await store.run_read(lambda conn: list(conn.execute(stmt).scalars())))


async def usage(store: MetadataStore) -> dict[str, tuple[int, int]]:
    """Per mirror: (bytes, entries) of cached manifests and blobs together."""
    out: dict[str, tuple[int, int]] = {}

    def q(conn: Connection) -> None:
        for table in (mirror_manifests, mirror_blobs):
            stmt = select(
                table.c.mirror, func.coalesce(func.sum(table.c.size), 0), func.count()
            ).group_by(table.c.mirror)
            for mirror, size, count in conn.execute(stmt):
                before = out.get(mirror, (0, 0))
                out[mirror] = (before[0] + int(size), before[1] + int(count))

    await store.run_read(q)
    return out


async def entries(store: MetadataStore, mirror: str | None = None) -> list[CacheEntry]:
    """What the mirrors hold (one of them, or all), least recently pulled first."""

    def q(conn: Connection) -> list[CacheEntry]:
        tags: dict[tuple[str, str], list[str]] = {}
        tag_stmt = select(mirror_tags.c.repository, mirror_tags.c.digest, mirror_tags.c.tag)
        if mirror is not None:
            tag_stmt = tag_stmt.where(mirror_tags.c.mirror == mirror)
        for repository, digest, tag in conn.execute(tag_stmt):
            tags.setdefault((repository, digest), []).append(tag)
        out: list[CacheEntry] = []
        for kind, table in (("manifest", mirror_manifests), ("blob", mirror_blobs)):
            stmt = select(
                table.c.mirror,
                table.c.repository,
                table.c.digest,
                table.c.size,
                table.c.fetched_at,
                table.c.pulled_at,
            )
            if mirror is not None:
                stmt = stmt.where(table.c.mirror == mirror)
            for row in conn.execute(stmt):
                out.append(
                    CacheEntry(
                        row[0],
                        kind,
                        row[1],
                        row[2],
                        int(row[3]),
                        row[4],
                        row[5],
                        tuple(sorted(tags.get((row[1], row[2]), ()))),
                    )
                )
        out.sort(key=lambda e: (e.pulled_at, e.kind != "manifest", e.repository, e.digest))
        return out

    return await store.run_read(q)


async def remove(store: MetadataStore, items: Sequence[CacheEntry]) -> int:
    """Forget cached entries (and the tags on removed manifests); returns how many went.

    A forgotten blob stays linked until garbage collection removes it, unless a pushed
    manifest still needs it."""
    manifests = [(e.repository, e.digest) for e in items if e.kind == "manifest"]
    blobs = [(e.repository, e.digest) for e in items if e.kind == "blob"]

    def w(conn: Connection) -> int:
        removed = 0
        for start in range(0, len(manifests), BATCH_SIZE):
            batch = manifests[start : start + BATCH_SIZE]
            conn.execute(
                delete(mirror_tags).where(
                    tuple_(mirror_tags.c.repository, mirror_tags.c.digest).in_(batch)
                )
            )
            # A subject evicted takes the list of its referrers along.
            conn.execute(
                delete(mirror_referrers).where(
                    tuple_(mirror_referrers.c.repository, mirror_referrers.c.subject).in_(batch)
                )
            )
            removed += conn.execute(
                delete(mirror_manifests).where(
                    tuple_(mirror_manifests.c.repository, mirror_manifests.c.digest).in_(batch)
                )
            ).rowcount
        for start in range(0, len(blobs), BATCH_SIZE):
            batch = blobs[start : start + BATCH_SIZE]
            removed += conn.execute(
                delete(mirror_blobs).where(
                    tuple_(mirror_blobs.c.repository, mirror_blobs.c.digest).in_(batch)
                )
            ).rowcount
        return removed

    return await store.run_write(w)


async def cached_in(store: MetadataStore, mirror: str, digest: str) -> str | None:
    """A repository of `mirror` that holds the blob, to link it from: cache is shared
    within a mirror only, so a mirror never serves what was pushed elsewhere."""
    b = mirror_blobs
    stmt = select(b.c.repository).where(b.c.mirror == mirror, b.c.digest == digest).limit(1)
    found: str | None = await store.run_query(lambda conn: conn.execute(stmt).scalar())
    return found
