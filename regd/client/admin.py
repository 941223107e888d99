"""regd's admin API (`/admin/v1/`): garbage collection, disk usage, retention.

Only regd answers these; another registry's 404 becomes a clear UnsupportedError.
"""

from __future__ import annotations

import json
from typing import Any

from regd.client.errors import NotFoundError, UnsupportedError
from regd.client.registry import RegistryClient


class AdminClient:
    def __init__(self, client: RegistryClient, host: str, token: str | None = None) -> None:
        self._client = client
        self._host = host
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _json(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        headers = dict(self._headers)
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = json.dumps(body).encode()
        url = self._client.base_url(self._host) + "/admin/v1" + path
        try:
            response = await self._client._call(
                method, self._host, url, headers=headers, params=params, content=content
            )
        except NotFoundError as exc:
            if exc.code in (None, "NOT_FOUND", "UNSUPPORTED"):
                raise UnsupportedError(
                    exc.method,
                    exc.url,
                    exc.status,
                    exc.code,
                    f"{self._host} has no regd admin API",
                ) from exc
            raise
        await response.aread()
        return response.json()

    async def collect(
        self,
        *,
        dry_run: bool,
        delete_untagged: bool = False,
        delete_orphan_referrers: bool = False,
        grace_seconds: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "dry_run": dry_run,
            "delete_untagged": delete_untagged,
            "delete_orphan_referrers": delete_orphan_referrers,
        }
        if grace_seconds is not None:
            body["grace_seconds"] = grace_seconds
        result: dict[str, Any] = await self._json("POST", "/gc", body=body)
        return result

    async def usage(self, repository: str | None = None) -> dict[str, Any]:
        params = {"repository": repository} if repository else None
        result: dict[str, Any] = await self._json("GET", "/usage", params=params)
        return result

    async def delete_repository(self, repository: str, *, dry_run: bool) -> dict[str, Any]:
        params = {"dry_run": "1"} if dry_run else None
        result: dict[str, Any] = await self._json(
            "DELETE", f"/repositories/{repository}", params=params
        )
        return result

    async def prune(
        self,
        repository: str,
        *,
        keep_last: int | None,
        keep: str | None,
        older_than: float | None,
        dry_run: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"dry_run": dry_run}
        if keep_last is not None:
            body["keep_last"] = keep_last
        if keep is not None:
            body["keep"] = keep
        if older_than is not None:
            body["older_than"] = older_than
        result: dict[str, Any] = await self._json(
            "POST", f"/repositories/{repository}/prune", body=body
        )
        return result

    async def verify(self, *, repair: bool) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", "/verify", body={"repair": repair})
        return result

    async def import_registry2(self, root: str, *, dry_run: bool) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "POST", "/import-registry2", body={"root": root, "dry_run": dry_run}
        )
        return result
