"""Adopting a Distribution 2.x storage root: index its repositories into the metadata.

When the root is regd's own storage root (a directory, or the `s3://bucket/prefix` regd
stores in), no blob byte moves: Distribution's blob paths are regd's. Otherwise blobs are
streamed in and verified against their digests.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regd.errors import ManifestBlobUnknown, RegistryError
from regd.metadata import MetadataStore
from regd.oci.digest import Digest, DigestError
from regd.registry.hashing import hash_stored
from regd.registry.manifests import Manifests
from regd.registry.validation import is_digest_reference
from regd.storage import (
    FilesystemDriver,
    PathNotFound,
    S3Driver,
    StorageDriver,
    StorageError,
    layout,
)
from regd.storage.base import InvalidPath


class ImportInvalid(RegistryError):
    code = "UNSUPPORTED"  # the spec's code for "an invalid set of parameters"


@dataclass(slots=True)
class ImportReport:
    root: str
    copied_bytes: bool
    dry_run: bool
    repositories: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes_copied: int = 0
    manifests: int = 0
    tags: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "dry_run": self.dry_run,
            "copied_bytes": self.copied_bytes,
            "repositories": self.repositories,
            "blobs": self.blobs,
            "bytes_copied": self.bytes_copied,
            "manifests": self.manifests,
            "tags": self.tags,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


class Adoption:
    def __init__(self, storage: StorageDriver, metadata: MetadataStore, manifests: Manifests):
        self._storage = storage
        self._metadata = metadata
        self._manifests = manifests

    async def import_root(self, root: str, *, dry_run: bool) -> ImportReport:
        started = time.monotonic()
        if root.startswith("s3://"):
            return await self._import_bucket(root, dry_run=dry_run, started=started)
        path = Path(root)
        if not path.is_absolute() or not (path / layout.ROOT).is_dir():
            raise ImportInvalid(
                f"{root!r} is not a Distribution storage root: expected an absolute path "
                f"holding {layout.ROOT}/"
            )
        source = FilesystemDriver(path)
        # A driver wrapped for metrics (regd.observability) names the one it wraps.
        target = getattr(self._storage, "wrapped", self._storage)
        in_place = isinstance(target, FilesystemDriver) and target.root == source.root
        report = ImportReport(str(source.root), copied_bytes=not in_place, dry_run=dry_run)
        for name in await self._find_repositories(source):
            report.repositories.append(name)
            await self._import_repository(source, name, report, in_place=in_place)
        report.seconds = time.monotonic() - started
        return report

    async def _import_bucket(self, root: str, *, dry_run: bool, started: float) -> ImportReport:
        """Adopt the bucket (and prefix) regd itself stores in; another bucket is not
        reachable from here."""
        storage = self._storage
        # Seen through the metrics' timing wrapper, as for a directory above.
        target = getattr(storage, "wrapped", storage)
        if not isinstance(target, S3Driver) or target.location != root.rstrip("/"):
            own = target.location if isinstance(target, S3Driver) else "a directory"
            raise ImportInvalid(
                f"{root!r} is not this registry's storage ({own}): only the bucket and prefix "
                "regd stores in can be adopted in place"
            )
        report = ImportReport(target.location, copied_bytes=False, dry_run=dry_run)
        for name in await self._find_repositories(storage):
            report.repositories.append(name)
            await self._import_repository(storage, name, report, in_place=True)
        report.seconds = time.monotonic() - started
        return report

    async def _find_repositories(self, source: StorageDriver) -> list[str]:
        found: list[str] = []
        base = f"{layout.ROOT}/repositories"

        async def walk(prefix: str) -> None:
            try:
                entries = await source.list(f"{base}/{prefix}" if prefix else base)
            except (PathNotFound, InvalidPath):
                return
            if prefix and ("_manifests" in entries or "_layers" in entries):
                found.append(prefix)
            for entry in entries:
                if not entry.startswith("_"):
                    await walk(f"{prefix}/{entry}" if prefix else entry)

        await walk("")
        return sorted(found)

    async def _links(self, source: StorageDriver, directory: str) -> list[Digest]:
        """Digests named by `<directory>/<alg>/<hex>/link` files."""
        out: list[Digest] = []
        try:
            algorithms = await source.list(directory)
        except PathNotFound:
            return out
        for algorithm in algorithms:
            for encoded in await source.list(f"{directory}/{algorithm}"):
                with contextlib.suppress(PathNotFound, DigestError):
                    text = await source.get_content(f"{directory}/{algorithm}/{encoded}/link")
                    out.append(Digest.parse(text.decode().strip()))
        return out

    async def _import_repository(
        self, source: StorageDriver, name: str, report: ImportReport, *, in_place: bool
    ) -> None:
        repo_dir = f"{layout.ROOT}/repositories/{name}"
        for digest in await self._links(source, f"{repo_dir}/_layers"):
            try:
                info = await source.stat(layout.blob_data(digest))
            except PathNotFound:
                report.skipped.append(
                    {"repository": name, "digest": str(digest), "reason": "blob data is gone"}
                )
                continue
            if report.dry_run:
                report.blobs += 1
                continue
            if not in_place:
                try:
                    report.bytes_copied += await self._copy_blob(source, digest)
                except StorageError as exc:
                    report.skipped.append(
                        {"repository": name, "digest": str(digest), "reason": str(exc)}
                    )
                    continue
            await self._metadata.link_blob(name, str(digest), info.size)
            report.blobs += 1

        payloads: dict[Digest, bytes] = {}
        for digest in await self._links(source, f"{repo_dir}/_manifests/revisions"):
            try:
                payloads[digest] = await source.get_content(layout.blob_data(digest))
            except PathNotFound:
                report.skipped.append(
                    {"repository": name, "digest": str(digest), "reason": "manifest data is gone"}
                )
        imported = await self._import_manifests(name, payloads, report)

        try:
            tags = await source.list(f"{repo_dir}/_manifests/tags")
        except PathNotFound:
            tags = []
        for tag in tags:
            try:
                text = await source.get_content(f"{repo_dir}/_manifests/tags/{tag}/current/link")
                digest = Digest.parse(text.decode().strip())
            except (PathNotFound, DigestError, UnicodeDecodeError):
                report.skipped.append({"repository": name, "tag": tag, "reason": "no valid link"})
                continue
            if digest not in imported:
                report.skipped.append(
                    {"repository": name, "tag": tag, "reason": f"manifest {digest} not imported"}
                )
                continue
            if is_digest_reference(tag):
                continue
            if not report.dry_run:
                await self._manifests.put(name, tag, payloads[digest], None)
            report.tags += 1

    async def _import_manifests(
        self, name: str, payloads: dict[Digest, bytes], report: ImportReport
    ) -> set[Digest]:
        imported: set[Digest] = set()
        pending = dict(payloads)
        # An index needs its children first; repeat while each pass makes progress.
        while pending:
            waiting: dict[Digest, tuple[bytes, str]] = {}
            for digest, payload in pending.items():
                if report.dry_run:
                    imported.add(digest)
                    continue
                try:
                    await self._manifests.put(name, str(digest), payload, None)
                except ManifestBlobUnknown as exc:
                    waiting[digest] = (payload, exc.message)
                    continue
                except RegistryError as exc:
                    report.skipped.append(
                        {"repository": name, "digest": str(digest), "reason": exc.message}
                    )
                    continue
                imported.add(digest)
            if len(waiting) == len(pending):
                for digest, (_, reason) in waiting.items():
                    report.skipped.append(
                        {"repository": name, "digest": str(digest), "reason": reason}
                    )
                break
            pending = {d: p for d, (p, _) in waiting.items()}
        report.manifests += len(imported)
        return imported

    async def _copy_blob(self, source: StorageDriver, digest: Digest) -> int:
        """Stream a blob into regd's storage, verified; 0 when it is already there."""
        target = layout.blob_data(digest)
        with contextlib.suppress(PathNotFound):
            await self._storage.stat(target)
            return 0
        staging = f"{layout.ROOT}/_imports/{digest.algorithm}-{digest.hex}-{time.time_ns()}"
        writer = await self._storage.writer(staging)
        try:
            hasher = await hash_stored(
                source, layout.blob_data(digest), digest.algorithm, copy_to=writer
            )
        except BaseException:
            await writer.cancel()
            raise
        if hasher.digest() != digest:
            await writer.cancel()
            raise StorageError(f"source blob hashes to {hasher.digest()}, not {digest}")
        await writer.commit()
        await self._storage.move(staging, target)
        return hasher.size
