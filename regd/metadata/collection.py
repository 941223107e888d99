"""The rows garbage collection and integrity checks work on: graph snapshots, rechecked
deletions, bulk leases, purges.

The registry layer decides what is garbage; this module reads the rows it decides from and
deletes what it chose, re-checking inside each transaction so that a push that raced the
decision wins. These are functions of a store rather than its methods: they serve only
the registry's collection and repair jobs, never a request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, and_, delete, exists, select, true

from regd.metadata import schema as t
from regd.metadata.records import UPLOAD_COLUMNS, UploadInfo
from regd.metadata.rules import BATCH_SIZE
from regd.metadata.store import MetadataStore


@dataclass(frozen=True, slots=True)
class ManifestNode:
    id: int
    repository_id: int
    digest: str
    size: int
    subject: str | None
    created_at: float


@dataclass(slots=True)
class RepositoryGraph:
    """One repository's manifests, tags and the edges between them."""

    repository_id: int
    name: str
    manifests: dict[int, ManifestNode] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)  # tag -> manifest id
    tag_times: dict[str, float] = field(default_factory=dict)
    children: dict[int, list[str]] = field(default_factory=dict)  # manifest id -> digests
    blobs: dict[int, list[str]] = field(default_factory=dict)  # manifest id -> blob digests


@dataclass(slots=True)
class Snapshot:
    repositories: dict[int, RepositoryGraph]
    blobs: dict[str, tuple[int, float]]  # digest -> (size, linked_at)
    links: dict[str, list[int]]  # digest -> repositories that may serve it
    uploads: list[UploadInfo]


def _load_graphs(
    conn: Connection, repository_ids: Sequence[int] | None
) -> dict[int, RepositoryGraph]:
    repos = select(t.repositories.c.id, t.repositories.c.name)
    if repository_ids is not None:
        repos = repos.where(t.repositories.c.id.in_(repository_ids))
    graphs = {rid: RepositoryGraph(rid, name) for rid, name in conn.execute(repos)}
    ids = list(graphs)
    if not ids:
        return graphs
    in_repos = t.manifests.c.repository_id.in_(ids) if repository_ids is not None else true()
    rows = conn.execute(
        select(
            t.manifests.c.id,
            t.manifests.c.repository_id,
            t.manifests.c.digest,
            t.manifests.c.size,
            t.manifests.c.subject,
            t.manifests.c.created_at,
        ).where(in_repos)
    )
    owner: dict[int, RepositoryGraph] = {}
    for row in rows:
        node = ManifestNode(*row)
        graph = graphs[node.repository_id]
        graph.manifests[node.id] = node
        owner[node.id] = graph
    tag_cond = t.tags.c.repository_id.in_(ids) if repository_ids is not None else true()
    for rid, name, mid, updated in conn.execute(
        select(
            t.tags.c.repository_id, t.tags.c.name, t.tags.c.manifest_id, t.tags.c.updated_at
        ).where(tag_cond)
    ):
        graphs[rid].tags[name] = mid
        graphs[rid].tag_times[name] = updated
    for table, attr in ((t.manifest_children, "children"), (t.manifest_blobs, "blobs")):
        stmt = select(table.c.manifest_id, table.c.digest)
        if repository_ids is not None:
            stmt = stmt.where(table.c.manifest_id.in_(list(owner)))
        for mid, digest in conn.execute(stmt):
            holder = owner.get(mid)
            if holder is not None:
                getattr(holder, attr).setdefault(mid, []).append(digest)
    return graphs


async def snapshot(store: MetadataStore) -> Snapshot:
    """Everything reachability needs, read in one transaction."""

    def q(conn: Connection) -> Snapshot:
        graphs = _load_graphs(conn, None)
        blobs = {
            d: (int(size), float(linked))
            for d, size, linked in conn.execute(
                select(t.blobs.c.digest, t.blobs.c.size, t.blobs.c.linked_at)
            )
        }
        links: dict[str, list[int]] = defaultdict(list)
        for rid, digest in conn.execute(
            select(t.repository_blobs.c.repository_id, t.repository_blobs.c.digest)
        ):
            links[digest].append(rid)
        uploads = [UploadInfo(*row) for row in conn.execute(select(*UPLOAD_COLUMNS))]
        return Snapshot(graphs, blobs, dict(links), uploads)

    return await store.run_read(q)


async def delete_manifests(
    store: MetadataStore,
    repository_id: int,
    decide: Callable[[RepositoryGraph], Iterable[int]],
) -> list[ManifestNode]:
    """Delete the manifests `decide` picks from the repository as it is now.

    The repository's rows are re-read inside the write transaction (and locked on
    PostgreSQL), so a tag or index pushed since the plan was made keeps what it needs.
    """

    def w(conn: Connection) -> list[ManifestNode]:
        conn.execute(
            store.exclusive(
                select(t.manifests.c.id).where(t.manifests.c.repository_id == repository_id),
                t.manifests,
            )
        ).all()
        graph = _load_graphs(conn, [repository_id]).get(repository_id)
        if graph is None:
            return []
        doomed = [graph.manifests[i] for i in decide(graph) if i in graph.manifests]
        ids = [m.id for m in doomed]
        for start in range(0, len(ids), BATCH_SIZE):
            # Their tags and references go with them (ON DELETE CASCADE).
            batch = ids[start : start + BATCH_SIZE]
            conn.execute(delete(t.manifests).where(t.manifests.c.id.in_(batch)))
        return doomed

    return await store.run_write(w)


async def acquire_locks(
    store: MetadataStore, names: Sequence[str], holder: str, ttl: float
) -> set[str]:
    """Take every free (or expired) lease among `names`; the names taken."""

    def w(conn: Connection) -> set[str]:
        now = store.clock.now()
        taken: set[str] = set()
        for start in range(0, len(names), BATCH_SIZE):
            batch = names[start : start + BATCH_SIZE]
            ins = store.insert(t.locks).values(
                [{"name": n, "holder": holder, "until": now + ttl} for n in batch]
            )
            ins = ins.on_conflict_do_update(
                index_elements=["name"],
                set_={"holder": holder, "until": now + ttl},
                where=t.locks.c.until < now,
            )
            taken.update(
                name
                for name, who in conn.execute(ins.returning(t.locks.c.name, t.locks.c.holder))
                if who == holder
            )
        return taken

    return await store.run_write(w)


async def release_locks(store: MetadataStore, names: Sequence[str], holder: str) -> None:
    def w(conn: Connection) -> None:
        for start in range(0, len(names), BATCH_SIZE):
            conn.execute(
                delete(t.locks).where(
                    t.locks.c.name.in_(names[start : start + BATCH_SIZE]),
                    t.locks.c.holder == holder,
                )
            )

    await store.run_write(w)


async def delete_unreferenced_blobs(
    store: MetadataStore, digests: Sequence[str], linked_before: float
) -> list[tuple[str, int]]:
    """Delete the rows of blobs no manifest references and nobody linked since the cutoff.

    The caller holds each blob's lease, so no upload places the file meanwhile; the blob
    rows are locked first (PostgreSQL) so a manifest push that locked them to reference a
    blob either finished before (and the blob stays) or waits and then finds it gone.
    """

    def w(conn: Connection, batch: Sequence[str]) -> list[tuple[str, int]]:
        conn.execute(
            store.exclusive(select(t.blobs.c.digest).where(t.blobs.c.digest.in_(batch)), t.blobs)
        ).all()
        unreferenced = conn.execute(
            select(t.blobs.c.digest, t.blobs.c.size).where(
                t.blobs.c.digest.in_(batch),
                t.blobs.c.linked_at < linked_before,
                ~exists().where(t.manifest_blobs.c.digest == t.blobs.c.digest),
            )
        ).all()
        doomed = [d for d, _ in unreferenced]
        if doomed:
            conn.execute(delete(t.repository_blobs).where(t.repository_blobs.c.digest.in_(doomed)))
            conn.execute(delete(t.blobs).where(t.blobs.c.digest.in_(doomed)))
        return [(d, int(size)) for d, size in unreferenced]

    out: list[tuple[str, int]] = []
    for start in range(0, len(digests), BATCH_SIZE):
        out += await store.run_write(w, digests[start : start + BATCH_SIZE])
    return out


async def purge_uploads(store: MetadataStore, idle_before: float) -> list[UploadInfo]:
    """Delete upload sessions idle since `idle_before` that no request is writing to."""

    def w(conn: Connection) -> list[UploadInfo]:
        now = store.clock.now()
        cond = and_(
            t.uploads.c.updated_at < idle_before,
            (t.uploads.c.lease.is_(None)) | (t.uploads.c.lease_until < now),
        )
        rows = [UploadInfo(*row) for row in conn.execute(select(*UPLOAD_COLUMNS).where(cond))]
        if rows:
            conn.execute(delete(t.uploads).where(t.uploads.c.id.in_([r.id for r in rows])))
        return rows

    return await store.run_write(w)


async def repository_names(store: MetadataStore) -> list[str]:
    return await store.run_read(
        lambda conn: list(conn.execute(select(t.repositories.c.name)).scalars())
    )


async def upload_ids(store: MetadataStore) -> set[str]:
    return await store.run_read(lambda conn: set(conn.execute(select(t.uploads.c.id)).scalars()))


async def forget_blobs(store: MetadataStore, digests: Sequence[str]) -> None:
    """Delete blob rows and their links whatever references them (repairs only)."""

    def w(conn: Connection, batch: Sequence[str]) -> None:
        conn.execute(delete(t.repository_blobs).where(t.repository_blobs.c.digest.in_(batch)))
        conn.execute(delete(t.blobs).where(t.blobs.c.digest.in_(batch)))

    for start in range(0, len(digests), BATCH_SIZE):
        await store.run_write(w, digests[start : start + BATCH_SIZE])


async def manifest_digests(store: MetadataStore) -> set[str]:
    return await store.run_read(
        lambda conn: set(conn.execute(select(t.manifests.c.digest)).scalars())
    )


async def referencing_manifests(
    store: MetadataStore, digests: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """For each blob digest, the (repository, manifest digest) pairs that reference it."""

    def q(conn: Connection) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for start in range(0, len(digests), BATCH_SIZE):
            rows = conn.execute(
                select(t.manifest_blobs.c.digest, t.repositories.c.name, t.manifests.c.digest)
                .select_from(
                    t.manifest_blobs.join(
                        t.manifests, t.manifests.c.id == t.manifest_blobs.c.manifest_id
                    ).join(t.repositories, t.repositories.c.id == t.manifests.c.repository_id)
                )
                .where(t.manifest_blobs.c.digest.in_(digests[start : start + BATCH_SIZE]))
            )
            for blob, repo, manifest in rows:
                out[blob].append((repo, manifest))
        return dict(out)

    return await store.run_read(q)
