"""Listings: the `/v2/` check, the catalog and tag lists, following `Link` pagination."""

from __future__ import annotations

import json

from regd.client.errors import ProtocolError
from regd.client.transport import Scope, Transport, need_host, next_link, pull_scope, without_query
from regd.oci.reference import Reference


class ListingOps(Transport):
    """Registry-wide calls: the API check, the catalog, and a repository's tags."""

    async def ping(self, host: str) -> None:
        """GET /v2/: reachable, speaks the API, and accepts our credentials."""
        await self._call("GET", host, self._url(host, "/v2/"))

    async def catalog(self, host: str, *, page_size: int | None = None) -> list[str]:
        return await self._paginate(
            host, "/v2/_catalog", "repositories", ("registry:catalog:*",), page_size
        )

    async def tags(self, ref: Reference, *, page_size: int | None = None) -> list[str]:
        host = need_host(ref)
        path = f"/v2/{ref.repository}/tags/list"
        return await self._paginate(host, path, "tags", (pull_scope(ref.repository),), page_size)

    async def _paginate(
        self, host: str, path: str, key: str, scopes: tuple[Scope, ...], page_size: int | None
    ) -> list[str]:
        url = self._url(host, path)
        params: dict[str, str] | None = {"n": str(page_size)} if page_size else None
        items: list[str] = []
        visited: set[str] = set()
        while True:
            response = await self._call("GET", host, url, scopes, params=params)
            try:
                values = response.json().get(key) or []
            except (json.JSONDecodeError, AttributeError):
                raise ProtocolError(f"GET {without_query(url)}: answer is not JSON") from None
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ProtocolError(f"GET {without_query(url)}: {key!r} is not a list of names")
            items.extend(values)
            link = next_link(response)
            if not link:
                return items
            url = str(response.request.url.join(link))
            params = None
            if url in visited:
                raise ProtocolError(f"GET {without_query(url)}: pagination loops")
            visited.add(url)
