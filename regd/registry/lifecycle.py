"""Garbage collection and disk usage, computed from the metadata and run online.

Reachability is per repository: tags keep their manifests; a kept index keeps its
children; a kept manifest keeps its referrers (signatures, SBOMs) and they in turn keep
theirs. Blobs are kept by any remaining manifest in any repository.

A sweep runs while regd serves. Safety comes from three rules:
- nothing uploaded, mounted or pushed within the grace period is collected;
- manifest deletions are re-decided inside the transaction that performs them;
- a blob's rows are removed (re-checked, under row locks) before its file, and both
  under the blob's lease, which an upload also holds while it places the file.
One sweep at a time per database: the `gc` lease.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from regd.clock import SYSTEM_CLOCK, Clock
from regd.errors import Conflict, TooManyRequests
from regd.metadata import MetadataStore
from regd.metadata import collection as rows
from regd.metadata.collection import RepositoryGraph, Snapshot
from regd.metadata.rules import BATCH_SIZE, blob_lease
from regd.mirror import Mirrors
from regd.oci.digest import Digest
from regd.registry.leases import SWEEP_LEASE_SECONDS
from regd.registry.tasks import task_group
from regd.storage import PathNotFound, StorageDriver, layout

GC_LEASE_SECONDS = 600.0
# A usage report holds a snapshot of every row and a core for seconds on a large registry:
# one at a time per process, and a caller waits this long for its turn.
USAGE_TURN_WAIT = 60.0


class SweepInProgress(Conflict):
    """Another process holds the `gc` lease."""


class UsageBusy(TooManyRequests):
    """Another usage report is being computed and did not finish in time."""


@dataclass(frozen=True, slots=True)
class Policy:
    grace_seconds: float = 3600.0
    delete_untagged: bool = False
    delete_orphan_referrers: bool = False
    upload_max_age: float = 24 * 3600.0


@dataclass(slots=True)
class Plan:
    dry_run: bool
    policy: Policy
    manifests: list[dict[str, Any]] = field(default_factory=list)
    blobs: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    # Unreferenced blobs spared only because they are younger than the grace period.
    held_blobs: int = 0
    held_bytes: int = 0
    seconds: float = 0.0

    @property
    def bytes_freed(self) -> int:
        return int(sum(b["size"] for b in self.blobs) + sum(m["size"] for m in self.manifests))

    def to_json(self) -> dict[str, Any]:
        per_repo: dict[str, dict[str, int]] = defaultdict(
            lambda: {"manifests": 0, "manifest_bytes": 0, "blobs": 0, "blob_bytes": 0}
        )
        for m in self.manifests:
            entry = per_repo[m["repository"]]
            entry["manifests"] += 1
            entry["manifest_bytes"] += m["size"]
        for b in self.blobs:
            for repo in b["repositories"] or ["(no repository)"]:
                entry = per_repo[repo]
                entry["blobs"] += 1
                entry["blob_bytes"] += b["size"]
        return {
            "dry_run": self.dry_run,
            "policy": {
                "grace_seconds": self.policy.grace_seconds,
                "delete_untagged": self.policy.delete_untagged,
                "delete_orphan_referrers": self.policy.delete_orphan_referrers,
                "upload_max_age": self.policy.upload_max_age,
            },
            "manifests": self.manifests,
            "blobs": self.blobs,
            "uploads": self.uploads,
            "repositories": dict(sorted(per_repo.items())),
            "totals": {
                "manifests": len(self.manifests),
                "blobs": len(self.blobs),
                "uploads": len(self.uploads),
                "bytes_freed": self.bytes_freed,
                "held_blobs": self.held_blobs,
                "held_bytes": self.held_bytes,
            },
            "seconds": round(self.seconds, 3),
        }


# -- reachability ----------------------------------------------------------------------


def kept_manifests(graph: RepositoryGraph) -> set[int]:
    """Manifests reachable from the repository's tags through children and referrers."""
    by_digest = {m.digest: m.id for m in graph.manifests.values()}
    referrers: dict[str, list[int]] = defaultdict(list)
    for m in graph.manifests.values():
        if m.subject is not None:
            referrers[m.subject].append(m.id)
    kept: set[int] = set()
    stack = [mid for mid in graph.tags.values() if mid in graph.manifests]
    while stack:
        mid = stack.pop()
        if mid in kept:
            continue
        kept.add(mid)
        for child in graph.children.get(mid, ()):
            if child in by_digest:
                stack.append(by_digest[child])
        stack.extend(referrers.get(graph.manifests[mid].digest, ()))
    return kept


def doomed_manifests(graph: RepositoryGraph, policy: Policy, cutoff: float) -> list[int]:
    """What the policy deletes from one repository, as the repository is now."""
    if not (policy.delete_untagged or policy.delete_orphan_referrers):
        return []
    tagged = set(graph.tags.values())
    old = {mid for mid, m in graph.manifests.items() if m.created_at < cutoff}
    doomed: set[int] = set()
    if policy.delete_untagged:
        doomed = old - kept_manifests(graph)
    if policy.delete_orphan_referrers:
        # A referrer whose subject is absent, transitively: deleting one orphans its own.
        present = {m.digest for mid, m in graph.manifests.items() if mid not in doomed}
        changed = True
        while changed:
            changed = False
            for mid in old - tagged - doomed:
                subject = graph.manifests[mid].subject
                if subject is not None and subject not in present:
                    doomed.add(mid)
                    present.discard(graph.manifests[mid].digest)
                    changed = True
    # Never delete a child that a surviving index still lists.
    survivors = set(graph.manifests) - doomed
    needed = {d for mid in survivors for d in graph.children.get(mid, ())}
    by_digest = {m.digest: mid for mid, m in graph.manifests.items()}
    changed = True
    while changed:
        changed = False
        for digest in list(needed):
            found = by_digest.get(digest)
            if found is not None and found in doomed:
                doomed.discard(found)
                needed.update(graph.children.get(found, ()))
                changed = True
    return sorted(doomed)


def _referenced_blobs(snapshot: Snapshot, doomed: set[int]) -> set[str]:
    out: set[str] = set()
    for graph in snapshot.repositories.values():
        for mid, digests in graph.blobs.items():
            if mid not in doomed:
                out.update(digests)
    return out


# -- the collector ---------------------------------------------------------------------


class Lifecycle:
    def __init__(
        self,
        storage: StorageDriver,
        metadata: MetadataStore,
        clock: Clock = SYSTEM_CLOCK,
        mirrors: Mirrors | None = None,
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._clock = clock
        # Cached blobs are referenced by the mirrors' own rows, which eviction removes.
        self._mirrors = mirrors
        self._usage_turn = trio.Lock()
        # The computation is pure Python over the snapshot: in a worker thread the event
        # loop keeps answering other requests while it runs (it gets the GIL back at each
        # switch interval).
        self._usage_thread = trio.CapacityLimiter(1)

    async def collect(self, policy: Policy, *, dry_run: bool) -> Plan:
        """Plan (and unless `dry_run`, carry out) one garbage collection."""
        started = time.monotonic()
        holder = None
        if not dry_run:
            holder = str(uuid.uuid4())
            if not await self._metadata.acquire_lock("gc", holder, GC_LEASE_SECONDS):
                raise SweepInProgress("another garbage collection is running")
        try:
            async with task_group() as nursery:
                if holder is not None:
                    nursery.start_soon(self._keep_gc_lease, holder)
                plan = await self._run(policy, dry_run=dry_run)
                nursery.cancel_scope.cancel()
        finally:
            if holder is not None:
                with trio.CancelScope(shield=True):
                    await self._metadata.release_lock("gc", holder)
        plan.seconds = time.monotonic() - started
        return plan

    async def _keep_gc_lease(self, holder: str) -> None:
        while True:
            await trio.sleep(GC_LEASE_SECONDS / 3)
            await self._metadata.acquire_lock("gc", holder, GC_LEASE_SECONDS)

    async def _run(self, policy: Policy, *, dry_run: bool) -> Plan:
        now = self._clock.now()
        cutoff = now - policy.grace_seconds
        plan = Plan(dry_run, policy)
        cached: set[str] = set()
        if self._mirrors is not None:
            evicted = await self._mirrors.evict(dry_run=dry_run)
            cached = await self._mirrors.kept_blobs()
            if dry_run:
                cached -= {e.digest for e in evicted if e.kind == "blob"}
        snap = await rows.snapshot(self._metadata)
        names = {rid: g.name for rid, g in snap.repositories.items()}

        doomed: set[int] = set()
        for graph in snap.repositories.values():
            for mid in doomed_manifests(graph, policy, cutoff):
                doomed.add(mid)
                m = graph.manifests[mid]
                plan.manifests.append(
                    {"repository": graph.name, "digest": m.digest, "size": m.size}
                )
        if not dry_run and doomed:
            plan.manifests = []
            for graph in snap.repositories.values():
                if not any(mid in doomed for mid in graph.manifests):
                    continue
                deleted = await rows.delete_manifests(
                    self._metadata,
                    graph.repository_id,
                    lambda g: doomed_manifests(g, policy, cutoff),
                )
                plan.manifests += [
                    {"repository": graph.name, "digest": m.digest, "size": m.size} for m in deleted
                ]
            doomed = set()
            snap = await rows.snapshot(self._metadata)

        referenced = _referenced_blobs(snap, doomed) | cached
        candidates = sorted(
            d for d, (_, linked) in snap.blobs.items() if d not in referenced and linked < cutoff
        )
        held = [
            size
            for d, (size, linked) in snap.blobs.items()
            if d not in referenced and linked >= cutoff
        ]
        plan.held_blobs, plan.held_bytes = len(held), int(sum(held))
        if dry_run:
            plan.blobs = [self._blob_entry(d, snap.blobs[d][0], snap, names) for d in candidates]
        else:
            plan.blobs = await self._sweep_blobs(candidates, cutoff, snap, names)

        await self._purge_uploads(plan, now - policy.upload_max_age, snap, dry_run=dry_run)
        return plan

    @staticmethod
    def _blob_entry(
        digest: str, size: int, snap: Snapshot, names: dict[int, str]
    ) -> dict[str, Any]:
        repos = sorted(names[r] for r in snap.links.get(digest, ()) if r in names)
        return {"digest": digest, "size": size, "repositories": repos}

    async def _sweep_blobs(
        self, candidates: list[str], cutoff: float, snap: Snapshot, names: dict[int, str]
    ) -> list[dict[str, Any]]:
        swept: list[dict[str, Any]] = []
        holder = str(uuid.uuid4())
        for start in range(0, len(candidates), BATCH_SIZE):
            batch = candidates[start : start + BATCH_SIZE]
            lease_names = [blob_lease(d) for d in batch]
            taken = await rows.acquire_locks(
                self._metadata, lease_names, holder, SWEEP_LEASE_SECONDS
            )
            # A blob whose lease is busy is being uploaded right now: not garbage.
            mine = [d for d in batch if blob_lease(d) in taken]
            try:
                deleted = await rows.delete_unreferenced_blobs(self._metadata, mine, cutoff)
                await self._storage.delete_many(
                    [layout.blob_dir(Digest.parse(digest)) for digest, _ in deleted]
                )
            finally:
                with trio.CancelScope(shield=True):
                    await rows.release_locks(self._metadata, sorted(taken), holder)
            swept += [self._blob_entry(d, size, snap, names) for d, size in deleted]
        return swept

    async def _purge_uploads(
        self, plan: Plan, idle_before: float, snap: Snapshot, *, dry_run: bool
    ) -> None:
        if dry_run:
            stale = [u for u in snap.uploads if u.updated_at < idle_before]
        else:
            stale = await rows.purge_uploads(self._metadata, idle_before)
            for upload in stale:
                with contextlib.suppress(PathNotFound):
                    await self._storage.delete(layout.upload_dir(upload.repository, upload.id))
        plan.uploads = [
            {"id": u.id, "repository": u.repository, "size": u.size, "idle_since": u.updated_at}
            for u in stale
        ]
        # Sessions that crashed before they had a row (monolithic pushes) leave only files.
        known = {u.id for u in snap.uploads}
        for name in sorted(g.name for g in snap.repositories.values()):
            base = f"{layout.repository(name)}/_uploads"
            try:
                entries = await self._storage.list(base)
            except PathNotFound:
                continue
            for entry in entries:
                if entry in known:
                    continue
                path = f"{base}/{entry}"
                try:
                    info = await self._storage.stat(path)
                except PathNotFound:
                    continue
                if info.modified >= idle_before:
                    continue
                plan.uploads.append(
                    {"id": entry, "repository": name, "size": None, "idle_since": info.modified}
                )
                if not dry_run:
                    with contextlib.suppress(PathNotFound):
                        await self._storage.delete(path)
        if not dry_run:
            # What no listing shows: an object store's multipart uploads left by a crash.
            await self._storage.purge_incomplete(idle_before)

    async def purge_uploads(self, max_age: float) -> int:
        """Only the stale-upload part of a collection; needs no sweep lease."""
        plan = Plan(False, Policy(upload_max_age=max_age))
        snap = await rows.snapshot(self._metadata)
        await self._purge_uploads(plan, self._clock.now() - max_age, snap, dry_run=False)
        return len(plan.uploads)

    # -- disk usage ----------------------------------------------------------------------

    async def usage(
        self, repository: str | None = None, *, grace_seconds: float = 3600.0, per_tag: bool = True
    ) -> dict[str, Any]:
        """`per_tag=False` leaves out each tag's figures (every repository's `tags` is
        empty): they are most of the work when a repository has many tags."""
        try:
            with trio.fail_after(USAGE_TURN_WAIT):
                await self._usage_turn.acquire()
        except trio.TooSlowError:
            raise UsageBusy(
                f"another usage report has been computing for over {USAGE_TURN_WAIT:.0f} s;"
                " try again later"
            ) from None
        try:
            return await self._usage(repository, grace_seconds, per_tag)
        finally:
            self._usage_turn.release()

    async def _usage(
        self, repository: str | None, grace_seconds: float, per_tag: bool
    ) -> dict[str, Any]:
        snap = await rows.snapshot(self._metadata)
        cached = await self._mirrors.kept_blobs() if self._mirrors is not None else set()
        usage = await trio.to_thread.run_sync(
            functools.partial(
                compute_usage,
                snap,
                repository,
                linked_before=self._clock.now() - grace_seconds,
                per_tag=per_tag,
                kept=cached,
            ),
            limiter=self._usage_thread,
        )
        # Pull-through cache apart from what was pushed: eviction only ever takes the former.
        cached_bytes = sum(snap.blobs[d][0] for d in cached if d in snap.blobs)
        usage["cached_bytes"] = cached_bytes
        usage["pushed_bytes"] = usage["total_bytes"] - cached_bytes
        usage["mirrors"] = await self._mirrors.usage() if self._mirrors is not None else []
        usage["grace_seconds"] = grace_seconds
        usage["held_bytes"] = usage["unreferenced_bytes"] - usage["reclaimable_bytes"]
        usage["volume"] = await self._volume()
        return usage

    async def _volume(self) -> dict[str, int] | None:
        """The room left where the blobs live, so a filling disk is seen before pushes
        fail; None when the driver cannot tell."""
        space = await self._storage.free_space()
        return None if space is None else {"free_bytes": space.free, "size_bytes": space.total}

    async def status(self) -> dict[str, Any]:
        """Where the data lives and the room left: no row is read, unlike usage."""
        return {
            "storage": {"driver": self._storage.name, "volume": await self._volume()},
            "database": self._metadata.dialect,
        }


def _closure(graph: RepositoryGraph, roots: Iterable[int]) -> set[int]:
    by_digest = {m.digest: m.id for m in graph.manifests.values()}
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        mid = stack.pop()
        if mid in seen or mid not in graph.manifests:
            continue
        seen.add(mid)
        stack.extend(by_digest[c] for c in graph.children.get(mid, ()) if c in by_digest)
    return seen


def compute_usage(
    snap: Snapshot,
    only: str | None = None,
    *,
    linked_before: float | None = None,
    per_tag: bool = True,
    kept: Iterable[str] = (),
) -> dict[str, Any]:
    """Sizes per registry, repository and tag, from the rows alone.

    A blob counts once wherever it is shared. `unique` is what deleting the thing (and
    collecting garbage afterwards) would free; `shared` is the rest of its size.
    """
    sizes = {d: s for d, (s, _) in snap.blobs.items()}
    # Which repositories, and which (repository, tag) pairs, hold each blob.
    blob_repos: dict[str, set[int]] = defaultdict(set)
    blob_tags: dict[str, set[tuple[int, str]]] = defaultdict(set)
    tag_blobs: dict[tuple[int, str], set[str]] = {}
    repo_blobs: dict[int, set[str]] = {}
    for rid, graph in snap.repositories.items():
        held: set[str] = set()
        for mid in graph.manifests:
            held.update(graph.blobs.get(mid, ()))
        repo_blobs[rid] = held
        for d in held:
            blob_repos[d].add(rid)
        for tag, mid in graph.tags.items() if per_tag else ():
            reach = _closure(graph, [mid])
            blobs = {d for m in reach for d in graph.blobs.get(m, ())}
            tag_blobs[(rid, tag)] = blobs
            for d in blobs:
                blob_tags[d].add((rid, tag))

    def total(digests: Iterable[str]) -> int:
        return sum(sizes.get(d, 0) for d in digests)

    repositories = []
    for rid, graph in sorted(snap.repositories.items(), key=lambda kv: kv[1].name):
        if only is not None and graph.name != only:
            continue
        held = repo_blobs[rid]
        manifest_bytes = sum(m.size for m in graph.manifests.values())
        unique = {d for d in held if blob_repos[d] == {rid}}
        tags = []
        for tag in sorted(graph.tags) if per_tag else ():
            blobs = tag_blobs[(rid, tag)]
            mine = {d for d in blobs if blob_tags[d] == {(rid, tag)}}
            tags.append(
                {
                    "tag": tag,
                    "digest": graph.manifests[graph.tags[tag]].digest
                    if graph.tags[tag] in graph.manifests
                    else None,
                    "size": total(blobs),
                    "unique": total(mine),
                    "shared": total(blobs) - total(mine),
                }
            )
        repositories.append(
            {
                "name": graph.name,
                "manifests": len(graph.manifests),
                "tags": tags,
                "size": total(held) + manifest_bytes,
                "unique": total(unique) + manifest_bytes,
                "shared": total(held) - total(unique),
            }
        )
    # Blobs a mirror holds are referenced by its cache until evicted.
    referenced = set(blob_repos) | set(kept)
    unreferenced = [d for d in sizes if d not in referenced]
    # What a collection with this grace period would free right now.
    collectable = [
        d for d in unreferenced if linked_before is None or snap.blobs[d][1] < linked_before
    ]
    return {
        "total_bytes": total(sizes)
        + sum(m.size for g in snap.repositories.values() for m in g.manifests.values()),
        "blobs": len(sizes),
        "unreferenced_blobs": len(unreferenced),
        "unreferenced_bytes": total(unreferenced),
        "reclaimable_bytes": total(collectable),
        "repositories": repositories,
    }
