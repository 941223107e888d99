"""Removing repositories, and tags by retention policy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from regd.clock import SYSTEM_CLOCK, Clock
from regd.errors import Conflict, NameUnknown, RegistryError
from regd.metadata import MetadataStore, Origin, TagInfo
from regd.registry import validation
from regd.registry.leases import Leases

# Repositories read per listing query while retention walks them all.
_PAGE = 500
_SEMVER = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[-+.]?(.*))?$")


class PolicyInvalid(RegistryError):
    code = "UNSUPPORTED"  # the spec's code for "an invalid set of parameters"


class RetentionInProgress(Conflict):
    """Another process is applying retention policies."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    keep_last: int | None = None
    keep: str | None = None
    older_than: float | None = None

    def validate(self) -> re.Pattern[str] | None:
        if self.keep_last is not None and self.keep_last < 0:
            raise PolicyInvalid("keep_last must not be negative")
        if self.older_than is not None and self.older_than < 0:
            raise PolicyInvalid("older_than must not be negative")
        if self.keep_last is None and self.keep is None and self.older_than is None:
            raise PolicyInvalid("a retention policy needs keep_last, keep or older_than")
        if self.keep is None:
            return None
        try:
            return re.compile(self.keep)
        except re.error as exc:
            raise PolicyInvalid(f"keep is not a valid regular expression: {exc}") from None


def version_key(tag: str) -> tuple[int, tuple[Any, ...]]:
    """Orders `v1.9` before `v1.10`; tags that are not versions sort before all that are."""
    match = _SEMVER.match(tag)
    if not match:
        return (0, (tag,))
    major, minor, patch, rest = match.groups()
    numbers = (int(major), int(minor or 0), int(patch or 0))
    # A release sorts after its pre-releases: 1.0.0-rc1 < 1.0.0.
    return (1, (*numbers, 0 if rest else 1, rest or ""))


def newest_first(tags: list[TagInfo]) -> list[TagInfo]:
    """By push time, newest first; tags pushed at the same moment by version."""
    return sorted(tags, key=lambda t: (t.updated_at, version_key(t.name)), reverse=True)


def select_for_removal(tags: list[TagInfo], policy: RetentionPolicy, now: float) -> list[TagInfo]:
    pattern = policy.validate()
    ordered = newest_first(tags)
    protected = {t.name for t in ordered[: policy.keep_last or 0]}
    doomed = []
    for tag in ordered:
        if tag.name in protected:
            continue
        if pattern is not None and pattern.search(tag.name):
            continue
        if policy.older_than is not None and tag.updated_at > now - policy.older_than:
            continue
        doomed.append(tag)
    return doomed


class Repositories:
    def __init__(self, metadata: MetadataStore, clock: Clock = SYSTEM_CLOCK) -> None:
        self._metadata = metadata
        self._clock = clock
        self._leases = Leases(metadata)

    async def apply_retention(
        self, rules: list[tuple[str, RetentionPolicy]], *, lease_seconds: float
    ) -> dict[str, list[str]]:
        """Prune every repository by the first rule whose pattern matches its whole name.

        Raises RetentionInProgress while another process is applying them."""
        holder = await self._leases.try_acquire("retention", ttl=lease_seconds)
        if holder is None:
            raise RetentionInProgress("another process is applying retention policies")
        removed: dict[str, list[str]] = {}
        try:
            compiled = [(re.compile(pattern), policy) for pattern, policy in rules]
            last: str | None = None
            while True:
                page = await self._metadata.list_repositories(last, _PAGE)
                for name in page.items:
                    for pattern, policy in compiled:
                        if pattern.fullmatch(name):
                            # Reported like any tag deletion, with no request behind it.
                            result = await self.prune(name, policy, dry_run=False, origin=Origin())
                            if result["removed"]:
                                removed[name] = [t["tag"] for t in result["removed"]]
                            break
                if not page.more or not page.items:
                    break
                last = page.items[-1]
        finally:
            await self._leases.release("retention", holder)
        return removed

    async def delete(
        self, repository: str, *, dry_run: bool, origin: Origin | None = None
    ) -> dict[str, Any]:
        name = validation.repository_name(repository)
        tags = await self._metadata.tag_details(name)
        if tags is None:
            raise NameUnknown(f"repository {name} is not known", {"name": name})
        result: dict[str, Any] = {"repository": name, "dry_run": dry_run, "tags": len(tags)}
        if dry_run:
            return result
        removed = await self._metadata.delete_repository(name, origin=origin)
        if removed is None:
            raise NameUnknown(f"repository {name} is not known", {"name": name})
        result["manifests"], result["tags"] = removed
        return result

    async def prune(
        self,
        repository: str,
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        origin: Origin | None = None,
    ) -> dict[str, Any]:
        name = validation.repository_name(repository)
        tags = await self._metadata.tag_details(name)
        if tags is None:
            raise NameUnknown(f"repository {name} is not known", {"name": name})
        doomed = select_for_removal(tags, policy, self._clock.now())
        if not dry_run and doomed:
            gone = set(
                await self._metadata.delete_tags(name, [t.name for t in doomed], origin=origin)
            )
            doomed = [t for t in doomed if t.name in gone]
        kept = sorted({t.name for t in tags} - {t.name for t in doomed})
        return {
            "repository": name,
            "dry_run": dry_run,
            "removed": [
                {"tag": t.name, "digest": t.digest, "pushed_at": t.updated_at} for t in doomed
            ],
            "kept": kept,
        }
