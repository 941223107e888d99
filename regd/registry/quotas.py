"""Storage quotas per group of repositories (a name pattern), checked on the write path.

A group's usage is counted as `regctl du` counts a repository: every blob a manifest of the
group holds, once however many of its repositories share it, plus the manifests' own bytes.
Blobs pushed but not yet held by a manifest are not charged, as `du` does not count them.

Where a push's size is known before its bytes arrive (Content-Length of a monolithic POST or
PUT, the chunks of a session) a blob that would take the group past its limit is refused
then; a manifest is refused when the blobs it would newly bring into the group, with its own
bytes, would. Each process counts a group at most once per `refresh` seconds and adds its
own pushes to that count meanwhile, so a check costs a dictionary lookup nearly always; a
count so estimated is made again before it refuses anything. The price: replicas pushing
into one group at the same moment may overshoot its limit by what they push within that
time. The limit is a soft one, like any checked-then-written cap.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from regd.errors import QuotaExceeded
from regd.metadata import MetadataStore
from regd.metadata.usage import GroupUsage, blob_sizes, group_usage, held_by

# Repository names whose matching quotas are remembered (one lookup per push otherwise).
_MATCH_CACHE = 4096


def _shown(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Quota:
    """At most `limit` bytes for the repositories `matches` accepts (`pattern` names it)."""

    pattern: str
    limit: int
    matches: Callable[[str], bool] = field(compare=False)

    @property
    def prefix(self) -> str:
        """The pattern's literal start: the database narrows the group by it."""
        return self.pattern.split("*", 1)[0]


@dataclass(slots=True)
class _Count:
    usage: GroupUsage
    # Until when this process trusts it (trio's clock).
    until: float
    # False once this process has added its own pushes to it or deleted from the group:
    # then it is an estimate, recounted before it refuses anything.
    exact: bool = True


# What a manifest push is charged to each group it lands in: pattern, bytes.
Charges = list[tuple[str, int]]


class Quotas:
    def __init__(
        self, metadata: MetadataStore, quotas: Sequence[Quota] = (), *, refresh: float = 5.0
    ) -> None:
        self._metadata = metadata
        self._quotas = tuple(quotas)
        self._refresh = refresh
        self._matching: OrderedDict[str, tuple[Quota, ...]] = OrderedDict()
        self._counts: dict[str, _Count] = {}
        self._locks = {q.pattern: trio.Lock() for q in self._quotas}

    @property
    def configured(self) -> tuple[Quota, ...]:
        return self._quotas

    def applying_to(self, repository: str) -> tuple[Quota, ...]:
        if not self._quotas:
            return ()
        found = self._matching.get(repository)
        if found is None:
            found = tuple(q for q in self._quotas if q.matches(repository))
            self._matching[repository] = found
            while len(self._matching) > _MATCH_CACHE:
                self._matching.popitem(last=False)
        return found

    async def _count(self, quota: Quota, *, fresh: bool = False) -> _Count:
        """The group's count, from this process's memory while it is trusted, else (or
        when `fresh`) counted now."""
        cached = self._counts.get(quota.pattern)
        if not fresh and cached is not None and trio.current_time() < cached.until:
            return cached
        # One count per group at a time: a burst of pushes waits for the same one.
        async with self._locks[quota.pattern]:
            again = self._counts.get(quota.pattern)
            if again is not None and again is not cached and again.exact:
                return again  # counted while this task waited
            if not fresh and again is not None and trio.current_time() < again.until:
                return again
            usage = await group_usage(self._metadata, quota.prefix, quota.matches)
            count = _Count(usage, trio.current_time() + self._refresh)
            self._counts[quota.pattern] = count
            return count

    def charge(self, charges: Charges) -> None:
        """Add what a push this process made has just stored to its groups' counts."""
        for pattern, size in charges:
            count = self._counts.get(pattern)
            if count is not None:
                count.usage = GroupUsage(count.usage.repository_ids, count.usage.bytes + size)
                count.exact = False

    def changed(self, repository: str) -> None:
        """This process removed something from `repository`: its groups' counts are high
        now, so each is recounted before it refuses a push."""
        for quota in self.applying_to(repository):
            count = self._counts.get(quota.pattern)
            if count is not None:
                count.exact = False

    async def check_blob(self, repository: str, size: int, digest: str | None = None) -> None:
        """Refuse a blob of `size` bytes that would take a group of `repository` past its
        limit (unless the group holds that very blob already)."""
        for quota in self.applying_to(repository):
            count = await self._count(quota)
            if count.usage.bytes + size <= quota.limit:
                continue
            if not count.exact:
                count = await self._count(quota, fresh=True)
                if count.usage.bytes + size <= quota.limit:
                    continue
            if digest is not None and await held_by(
                self._metadata, count.usage.repository_ids, [digest]
            ):
                continue
            raise _refusal(repository, quota, count.usage.bytes, size, "blob")

    async def check_manifest(
        self, repository: str, digest: str, size: int, blobs: Sequence[str]
    ) -> Charges:
        """Refuse a manifest whose blobs new to the group, with its own bytes, would take a
        group of `repository` past its limit; else what to `charge` once it is stored."""
        quotas = self.applying_to(repository)
        if not quotas:
            return []
        # Unknown blobs are the manifest push's own error (MANIFEST_BLOB_UNKNOWN), not ours.
        sizes = await blob_sizes(self._metadata, sorted(set(blobs)))
        # At most this much is new to a group: an estimate, the exact figure costs more.
        at_most = sum(sizes.values()) + size
        charges: Charges = []
        for quota in quotas:
            count = await self._count(quota)
            if count.usage.bytes + at_most <= quota.limit:
                charges.append((quota.pattern, at_most))
                continue
            if not count.exact:
                count = await self._count(quota, fresh=True)
            held = await held_by(self._metadata, count.usage.repository_ids, sorted(sizes))
            needed = sum(s for d, s in sizes.items() if d not in held)
            if not await self._metadata.get_manifest(repository, digest=digest, with_payload=False):
                needed += size
            if count.usage.bytes + needed > quota.limit:
                raise _refusal(repository, quota, count.usage.bytes, needed, "manifest")
            charges.append((quota.pattern, needed))
        return charges

    async def report(self, repository: str | None = None) -> list[dict[str, Any]]:
        """Each quota (those applying to `repository` when given) with its usage, counted
        now; the counts also refresh what checks use."""
        quotas = self._quotas if repository is None else self.applying_to(repository)
        out = []
        for quota in quotas:
            usage = (await self._count(quota, fresh=True)).usage
            out.append(
                {
                    "repositories": quota.pattern,
                    "limit_bytes": quota.limit,
                    "used_bytes": usage.bytes,
                    "repository_count": len(usage.repository_ids),
                }
            )
        return out


def _refusal(repository: str, quota: Quota, used: int, needed: int, what: str) -> QuotaExceeded:
    return QuotaExceeded(
        f"{what} push to {repository} refused: quota {quota.pattern} is {_shown(quota.limit)}, "
        f"{_shown(used)} is used and this push needs {_shown(needed)} more",
        {"quota": quota.pattern, "limit": quota.limit, "used": used, "needed": needed},
    )
