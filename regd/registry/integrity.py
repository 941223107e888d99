"""Checking stored blobs against their digests and the rows that name them."""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import trio

from regd.clock import SYSTEM_CLOCK, Clock
from regd.metadata import MetadataStore
from regd.metadata import collection as rows
from regd.metadata.rules import blob_lease
from regd.oci.digest import Digest, DigestError, is_supported_algorithm
from regd.registry.hashing import hash_stored
from regd.registry.leases import SWEEP_LEASE_SECONDS
from regd.registry.tasks import task_group
from regd.storage import PathNotFound, StorageDriver, layout

HASH_CONCURRENCY = 2


@dataclass(slots=True)
class Report:
    checked: int = 0
    bytes_checked: int = 0
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    repaired: bool = False
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return not (self.corrupt or self.missing or self.unknown)

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "repaired": self.repaired,
            "checked": self.checked,
            "bytes_checked": self.bytes_checked,
            "corrupt": self.corrupt,
            "missing": self.missing,
            "unknown": self.unknown,
            "seconds": round(self.seconds, 3),
        }


async def stored_blobs(storage: StorageDriver) -> dict[str, int]:
    """Every `blobs/<alg>/<xx>/<hex>/data` file in storage, by digest, with its size."""
    found: dict[str, int] = {}
    root = layout.blobs_root()
    try:
        algorithms = await storage.list(root)
    except PathNotFound:
        return found
    for algorithm in algorithms:
        if not is_supported_algorithm(algorithm):
            continue
        for prefix in await storage.list(f"{root}/{algorithm}"):
            for encoded in await storage.list(f"{root}/{algorithm}/{prefix}"):
                try:
                    digest = Digest.parse(f"{algorithm}:{encoded}")
                except DigestError:
                    continue
                with contextlib.suppress(PathNotFound):
                    info = await storage.stat(layout.blob_data(digest))
                    if not info.is_dir:
                        found[str(digest)] = info.size
    return found


class Integrity:
    def __init__(
        self, storage: StorageDriver, metadata: MetadataStore, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._storage = storage
        self._metadata = metadata
        self._clock = clock

    async def verify(self, *, repair: bool, grace_seconds: float = 3600.0) -> Report:
        started = time.monotonic()
        report = Report(repaired=repair)
        snap = await rows.snapshot(self._metadata)
        files = await stored_blobs(self._storage)
        # Distribution keeps each manifest as a blob too; an adopted root still has them.
        manifest_copies = await rows.manifest_digests(self._metadata)

        missing = sorted(d for d in snap.blobs if d not in files)
        users = await rows.referencing_manifests(self._metadata, missing)
        for digest in missing:
            report.missing.append(
                {
                    "digest": digest,
                    "size": snap.blobs[digest][0],
                    "used_by": [{"repository": r, "manifest": m} for r, m in users.get(digest, [])],
                }
            )
        cutoff = self._clock.now() - grace_seconds
        for digest, size in sorted(files.items()):
            if digest in snap.blobs or digest in manifest_copies:
                continue
            info = await self._storage.stat(layout.blob_data(Digest.parse(digest)))
            report.unknown.append({"digest": digest, "size": size, "old": info.modified < cutoff})

        limiter = trio.CapacityLimiter(HASH_CONCURRENCY)
        async with task_group() as nursery:
            for digest in sorted(d for d in snap.blobs if d in files):
                nursery.start_soon(self._check, digest, files[digest], report, limiter)

        if repair:
            await self._repair(report)
        report.corrupt.sort(key=lambda e: e["digest"])
        report.seconds = time.monotonic() - started
        return report

    async def _check(
        self, digest: str, size: int, report: Report, limiter: trio.CapacityLimiter
    ) -> None:
        async with limiter:
            expected = Digest.parse(digest)
            try:
                hasher = await hash_stored(
                    self._storage, layout.blob_data(expected), expected.algorithm
                )
            except PathNotFound:
                return  # collected meanwhile
        report.checked += 1
        report.bytes_checked += hasher.size
        if hasher.digest() != expected:
            report.corrupt.append({"digest": digest, "size": size, "actual": str(hasher.digest())})

    async def _repair(self, report: Report) -> None:
        holder = str(uuid.uuid4())
        corrupt = [e["digest"] for e in report.corrupt]
        dangling = [e["digest"] for e in report.missing]
        names = [blob_lease(d) for d in corrupt + dangling]
        taken = await rows.acquire_locks(self._metadata, names, holder, SWEEP_LEASE_SECONDS)
        try:
            # Forgetting the rows makes clients see the blob as absent and push it again.
            await rows.forget_blobs(
                self._metadata, [d for d in corrupt + dangling if blob_lease(d) in taken]
            )
            for digest in corrupt:
                if blob_lease(digest) not in taken:
                    continue
                parsed = Digest.parse(digest)
                with contextlib.suppress(PathNotFound):
                    await self._storage.move(
                        layout.blob_data(parsed), layout.quarantine_data(parsed)
                    )
        finally:
            with trio.CancelScope(shield=True):
                await rows.release_locks(self._metadata, sorted(taken), holder)
        # Files nobody knows, left by crashes long enough ago, are removed.
        for entry in report.unknown:
            if entry["old"]:
                with contextlib.suppress(PathNotFound):
                    await self._storage.delete(layout.blob_dir(Digest.parse(entry["digest"])))
