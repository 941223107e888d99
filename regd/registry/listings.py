"""Paged listings: tags of a repository, the catalog, and referrers of a manifest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from regd.errors import NameUnknown, PaginationInvalid
from regd.metadata import MetadataStore, Page
from regd.metadata.rules import BATCH_SIZE
from regd.mirror import Mirrors
from regd.oci import mediatypes as mt
from regd.registry import validation

# Without `n` a listing is whole; with it, a page is capped so one request stays cheap.
MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Referrers:
    index: dict[str, Any]
    filtered: bool
    # A mirror's upstream failed and its list as last seen stands in: the cause.
    stale: str | None = None


def page_size(n: str | None) -> int | None:
    if n is None or n == "":
        return None
    if not n.isdigit() or len(n) > 9:
        raise PaginationInvalid(f"n must be a non-negative integer, not {n[:20]!r}")
    return min(int(n), MAX_PAGE)


class Listings:
    def __init__(self, metadata: MetadataStore, mirrors: Mirrors | None = None) -> None:
        self._metadata = metadata
        self._mirrors = mirrors

    async def tags(self, repository: str, n: int | None, last: str | None) -> Page:
        name = validation.repository_name(repository)
        if n == 0:
            if not await self._metadata.repository_exists(name):
                raise NameUnknown(f"repository {name} is not known", {"name": name})
            return Page([], more=False)
        page = await self._metadata.list_tags(name, last, n)
        if page is None:
            raise NameUnknown(f"repository {name} is not known", {"name": name})
        return page

    async def catalog(
        self, n: int | None, last: str | None, visible: Callable[[str], bool] | None = None
    ) -> Page:
        """Repository names after `last`, at most `n`. With `visible`, only the names it
        accepts, and `n` counts those, so every page but the last is full."""
        if n == 0:
            return Page([], more=False)
        if visible is None:
            return await self._metadata.list_repositories(last, n)
        items: list[str] = []
        cursor = last
        while True:
            page = await self._metadata.list_repositories(cursor, BATCH_SIZE)
            for name in page.items:
                if visible(name):
                    items.append(name)
                    if n is not None and len(items) > n:
                        return Page(items[:n], more=True)
            if not page.more or not page.items:
                return Page(items, more=False)
            cursor = page.items[-1]

    async def referrers(self, repository: str, digest: str, artifact_type: str | None) -> Referrers:
        name = validation.repository_name(repository)
        subject = validation.digest(digest)
        route = self._mirrors.find(name) if self._mirrors is not None else None
        manifests: list[dict[str, Any]] = []
        rows = []
        if route is None or not route.prefixed:
            # A namespace that takes pushes (the default mirror's too): what was pushed wins.
            rows = await self._metadata.referrers(name, str(subject), artifact_type or None)
        if not rows and route is not None and self._mirrors is not None:
            found, stale = await self._mirrors.referrers(route, subject)
            if artifact_type:
                found = [d for d in found if d.get("artifactType") == artifact_type]
            index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": found}
            return Referrers(index, filtered=bool(artifact_type), stale=stale)
        for row in rows:
            descriptor: dict[str, Any] = {
                "mediaType": row.media_type,
                "digest": row.digest,
                "size": row.size,
            }
            if row.artifact_type:
                descriptor["artifactType"] = row.artifact_type
            if row.annotations:
                descriptor["annotations"] = row.annotations
            manifests.append(descriptor)
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
        return Referrers(index, filtered=bool(artifact_type))
