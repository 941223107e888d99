"""Reads for browsing: a page of a repository's tags with what each points at, and the
state of the collection lease. Pages are keyset pages (a cursor, never an OFFSET), so the
last page of 100,000 tags costs what the first does."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, func, select, tuple_

from regd.metadata import schema as t
from regd.metadata.store import MetadataStore
from regd.oci import mediatypes as mt


@dataclass(frozen=True, slots=True)
class TagRow:
    name: str
    digest: str
    media_type: str
    pushed_at: float
    # The manifest, its blobs and (for an index) its children's manifests and blobs.
    size: int
    # Only for an index: its payload, from which the platforms are read.
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class TagPage:
    rows: list[TagRow]
    more: bool


async def tag_page(
    store: MetadataStore,
    repository: str,
    *,
    by_time: bool,
    after_name: str | None,
    after_time: float | None,
    limit: int,
) -> TagPage | None:
    """A page of tags after the cursor, by name or newest first (tags pushed in the same
    instant by name, descending); None when the repository is unknown."""

    def q(conn: Connection) -> TagPage | None:
        repo_id = conn.execute(
            select(t.repositories.c.id).where(t.repositories.c.name == repository)
        ).scalar()
        if repo_id is None:
            return None
        stmt = (
            select(
                t.tags.c.name,
                t.manifests.c.id,
                t.manifests.c.digest,
                t.manifests.c.media_type,
                t.tags.c.updated_at,
                t.manifests.c.size,
            )
            .select_from(t.tags.join(t.manifests, t.manifests.c.id == t.tags.c.manifest_id))
            .where(t.tags.c.repository_id == repo_id)
        )
        if by_time:
            if after_time is not None and after_name is not None:
                # A row comparison, which both databases answer from the index alone.
                stmt = stmt.where(
                    tuple_(t.tags.c.updated_at, t.tags.c.name) < tuple_(after_time, after_name)
                )
            # Both descending, so the tags_pushed index is read backwards and nothing sorted.
            stmt = stmt.order_by(t.tags.c.updated_at.desc(), t.tags.c.name.desc())
        else:
            if after_name is not None:
                stmt = stmt.where(t.tags.c.name > after_name)
            stmt = stmt.order_by(t.tags.c.name)
        found = conn.execute(stmt.limit(limit + 1)).all()
        more = len(found) > limit
        found = found[:limit]
        ids = {row[1] for row in found}
        indexes = {row[1] for row in found if row[3] in mt.INDEXES}
        children = _children(conn, repo_id, indexes)
        sizes = _blob_sizes(conn, ids | {c for kids in children.values() for c, _ in kids})
        payloads = _payloads(conn, indexes)
        rows = []
        for name, mid, digest, media_type, pushed_at, size in found:
            total = size + sizes.get(mid, 0)
            for child, child_size in children.get(mid, ()):
                total += child_size + sizes.get(child, 0)
            rows.append(TagRow(name, digest, media_type, pushed_at, total, payloads.get(mid)))
        return TagPage(rows, more)

    return await store.run_read(q)


def _children(
    conn: Connection, repo_id: int, parents: set[int]
) -> dict[int, list[tuple[int, int]]]:
    """For each index among `parents`: its child manifests' ids and sizes."""
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    if not parents:
        return out
    rows = conn.execute(
        select(t.manifest_children.c.manifest_id, t.manifests.c.id, t.manifests.c.size)
        .select_from(
            t.manifest_children.join(
                t.manifests,
                and_(
                    t.manifests.c.repository_id == repo_id,
                    t.manifests.c.digest == t.manifest_children.c.digest,
                ),
            )
        )
        .where(t.manifest_children.c.manifest_id.in_(sorted(parents)))
    )
    for parent, child, size in rows:
        out[parent].append((child, size))
    return out


def _blob_sizes(conn: Connection, manifest_ids: set[int]) -> dict[int, int]:
    if not manifest_ids:
        return {}
    rows = conn.execute(
        select(t.manifest_blobs.c.manifest_id, func.coalesce(func.sum(t.blobs.c.size), 0))
        .select_from(t.manifest_blobs.join(t.blobs, t.blobs.c.digest == t.manifest_blobs.c.digest))
        .where(t.manifest_blobs.c.manifest_id.in_(sorted(manifest_ids)))
        .group_by(t.manifest_blobs.c.manifest_id)
    )
    return {mid: int(total) for mid, total in rows}


def _payloads(conn: Connection, manifest_ids: set[int]) -> dict[int, bytes]:
    if not manifest_ids:
        return {}
    rows = conn.execute(
        select(t.manifests.c.id, t.manifests.c.payload).where(
            t.manifests.c.id.in_(sorted(manifest_ids))
        )
    )
    return {mid: bytes(payload) for mid, payload in rows}


async def tag_digest(store: MetadataStore, repository: str, tag: str) -> str | None:
    """The digest a tag points at, found through the (repository, name) key: with many
    tags on few manifests that is one row, where a join from the manifests' side visits
    every tag of each."""

    def q(conn: Connection) -> str | None:
        digest: str | None = conn.execute(
            select(t.manifests.c.digest)
            .select_from(
                t.tags.join(t.repositories, t.repositories.c.id == t.tags.c.repository_id).join(
                    t.manifests, t.manifests.c.id == t.tags.c.manifest_id
                )
            )
            .where(t.repositories.c.name == repository, t.tags.c.name == tag)
        ).scalar()
        return digest

    return await store.run_read(q)


async def tag_count(store: MetadataStore, repository: str, cap: int) -> int:
    """How many tags the repository has, counted up to `cap` + 1: beyond that, a count
    costs a visit to every tag and says little more."""

    def q(conn: Connection) -> int:
        capped = (
            select(t.tags.c.name)
            .select_from(t.tags.join(t.repositories, t.repositories.c.id == t.tags.c.repository_id))
            .where(t.repositories.c.name == repository)
            .limit(cap + 1)
            .subquery()
        )
        return int(conn.execute(select(func.count()).select_from(capped)).scalar() or 0)

    return await store.run_read(q)


async def lease_until(store: MetadataStore, names: Sequence[str]) -> dict[str, float]:
    """The named leases currently held (not expired), and until when."""

    def q(conn: Connection) -> dict[str, float]:
        now = store.clock.now()
        rows = conn.execute(
            select(t.locks.c.name, t.locks.c.until).where(
                t.locks.c.name.in_(list(names)), t.locks.c.until >= now
            )
        )
        return {name: float(until) for name, until in rows}

    return await store.run_read(q)
