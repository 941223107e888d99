"""Paged listings: tags of a repository, the catalog, and referrers of a manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from regd.errors import NameUnknown, PaginationInvalid
from regd.metadata import MetadataStore, Page
from regd.oci import mediatypes as mt
from regd.registry import validation

# Without `n` a listing is whole; with it, a page is capped so one request stays cheap.
MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Referrers:
    index: dict[str, Any]
    filtered: bool


def page_size(n: str | None) -> int | None:
    if n is None or n == "":
        return None
    if not n.isdigit() or len(n) > 9:
        raise PaginationInvalid(f"n must be a non-negative integer, not {n[:20]!r}")
    return min(int(n), MAX_PAGE)


class Listings:
    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

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

    async def catalog(self, n: int | None, last: str | None) -> Page:
        if n == 0:
            return Page([], more=False)
        return await self._metadata.list_repositories(last, n)

    async def referrers(self, repository: str, digest: str, artifact_type: str | None) -> Referrers:
        name = validation.repository_name(repository)
        subject = validation.digest(digest)
        rows = await self._metadata.referrers(name, str(subject), artifact_type or None)
        manifests = []
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
