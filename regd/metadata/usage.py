"""Stored bytes of a group of repositories, as quotas count them: the reads behind a check.

Counted as `regd.registry.lifecycle.compute_usage` counts one repository, over a group: each
blob a manifest of the group holds once, however many of the group's repositories share it,
plus every manifest's own bytes. These are a few indexed statements over the group's rows,
never a snapshot of the whole registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from regd.metadata import schema as t
from regd.metadata.rules import BATCH_SIZE
from regd.metadata.store import MetadataStore


@dataclass(frozen=True, slots=True)
class GroupUsage:
    repository_ids: tuple[int, ...]
    bytes: int


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _batches(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), BATCH_SIZE):
        yield items[start : start + BATCH_SIZE]


async def group_usage(
    store: MetadataStore, prefix: str, matches: Callable[[str], bool]
) -> GroupUsage:
    """The repositories whose name starts with `prefix` and `matches`, and their bytes."""

    def q(conn: Connection) -> GroupUsage:
        names = conn.execute(
            select(t.repositories.c.id, t.repositories.c.name).where(
                t.repositories.c.name.like(_like_prefix(prefix), escape="\\")
            )
        )
        ids = tuple(rid for rid, name in names if matches(name))
        sizes: dict[str, int] = {}
        manifest_bytes = 0
        for batch in _batches(ids):
            held = (
                select(t.manifest_blobs.c.digest)
                .join(t.manifests, t.manifests.c.id == t.manifest_blobs.c.manifest_id)
                .where(t.manifests.c.repository_id.in_(batch))
            )
            for digest, size in conn.execute(
                select(t.blobs.c.digest, t.blobs.c.size).where(t.blobs.c.digest.in_(held))
            ):
                sizes[digest] = int(size)
            manifest_bytes += int(
                conn.execute(
                    select(func.coalesce(func.sum(t.manifests.c.size), 0)).where(
                        t.manifests.c.repository_id.in_(batch)
                    )
                ).scalar_one()
            )
        return GroupUsage(ids, sum(sizes.values()) + manifest_bytes)

    return await store.run_read(q)


async def blob_sizes(store: MetadataStore, digests: Sequence[str]) -> dict[str, int]:
    """The stored size of each of `digests` that is a known blob."""

    def q(conn: Connection) -> dict[str, int]:
        out: dict[str, int] = {}
        for start in range(0, len(digests), BATCH_SIZE):
            batch = list(digests[start : start + BATCH_SIZE])
            for digest, size in conn.execute(
                select(t.blobs.c.digest, t.blobs.c.size).where(t.blobs.c.digest.in_(batch))
            ):
                out[digest] = int(size)
        return out

    # One statement for a manifest's blobs, as nearly every manifest has: the hot path's read.
    if len(digests) <= BATCH_SIZE:
        return await store.run_query(q)
    return await store.run_read(q)


async def held_by(
    store: MetadataStore, repository_ids: Sequence[int], digests: Sequence[str]
) -> set[str]:
    """Which of `digests` a manifest of one of `repository_ids` already holds."""
    if not repository_ids or not digests:
        return set()

    def q(conn: Connection) -> set[str]:
        out: set[str] = set()
        for ids in _batches(repository_ids):
            for start in range(0, len(digests), BATCH_SIZE):
                batch = list(digests[start : start + BATCH_SIZE])
                out.update(
                    conn.execute(
                        select(t.manifest_blobs.c.digest)
                        .join(t.manifests, t.manifests.c.id == t.manifest_blobs.c.manifest_id)
                        .where(
                            t.manifests.c.repository_id.in_(ids),
                            t.manifest_blobs.c.digest.in_(batch),
                        )
                        .distinct()
                    ).scalars()
                )
        return out

    if len(repository_ids) <= BATCH_SIZE and len(digests) <= BATCH_SIZE:
        return await store.run_query(q)
    return await store.run_read(q)
