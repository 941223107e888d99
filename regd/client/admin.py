"""regd's admin API (`/admin/v1/`): garbage collection, disk usage, retention, maintenance
mode, accounts, machine tokens and the audit trail.

Only regd answers these; another registry's 404 becomes a clear UnsupportedError. With an
admin token the client sends it and nothing else; without one, the registry's challenge is
answered with the credentials stored for the host (an account with the admin right).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

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
                method,
                self._host,
                url,
                ok=(200, 201),
                headers=headers,
                params=params,
                content=content,
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

    async def cache(self, mirror: str | None = None) -> dict[str, Any]:
        params = {"mirror": mirror} if mirror else None
        result: dict[str, Any] = await self._json("GET", "/cache", params=params)
        return result

    async def evict(
        self, mirror: str | None, repository: str | None, digest: str | None
    ) -> dict[str, Any]:
        body = {"mirror": mirror, "repository": repository, "digest": digest}
        result: dict[str, Any] = await self._json("POST", "/cache/evict", body=body)
        return result

    async def maintenance(self) -> dict[str, Any]:
        """`{"enabled", "message", "since"}`: whether regd refuses writes for maintenance."""
        result: dict[str, Any] = await self._json("GET", "/maintenance")
        return result

    async def set_maintenance(self, enabled: bool, message: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "PUT", "/maintenance", body={"enabled": enabled, "message": message}
        )
        return result

    async def status(self) -> dict[str, Any]:
        """Version, uptime, storage driver and free space, database kind, and whether a
        garbage collection runs: cheap, unlike usage."""
        result: dict[str, Any] = await self._json("GET", "/status")
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

    # -- events --------------------------------------------------------------------------

    async def events(
        self, *, endpoint: str | None = None, failed: bool = False
    ) -> list[dict[str, Any]]:
        """Each event endpoint's queue: depth, failures, last error, last delivery."""
        params: dict[str, str] = {}
        if endpoint:
            params["endpoint"] = endpoint
        if failed:
            params["failed"] = "1"
        result: dict[str, Any] = await self._json("GET", "/events", params=params or None)
        endpoints: list[dict[str, Any]] = result["endpoints"]
        return endpoints

    async def retry_events(self, endpoint: str | None = None) -> list[str]:
        """Make failing endpoints (or `endpoint`) try again now; the endpoints reset."""
        body = {"endpoint": endpoint} if endpoint else {}
        result: dict[str, Any] = await self._json("POST", "/events/retry", body=body)
        names: list[str] = result["retried"]
        return names

    async def drop_events(self, endpoint: str, *, through: int | None = None) -> int:
        """Give up on an endpoint's waiting events (up to sequence `through`, or all)."""
        body: dict[str, Any] = {"endpoint": endpoint}
        if through is not None:
            body["through"] = through
        result: dict[str, Any] = await self._json("POST", "/events/drop", body=body)
        return int(result["dropped"])

    # -- accounts, machine tokens, audit -------------------------------------------------

    async def users(self) -> list[dict[str, Any]]:
        result: dict[str, Any] = await self._json("GET", "/users")
        users: list[dict[str, Any]] = result["users"]
        return users

    async def add_user(self, name: str, password: str, groups: list[str]) -> dict[str, Any]:
        """The answer's `restart` is true when the registry serves without authentication:
        the first account turns it on at the registry's next start."""
        body = {"name": name, "password": password, "groups": groups}
        result: dict[str, Any] = await self._json("POST", "/users", body=body)
        return result

    async def set_password(self, name: str, password: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "PUT", f"/users/{_segment(name)}/password", body={"password": password}
        )
        return result

    async def set_groups(self, name: str, groups: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "PUT", f"/users/{_segment(name)}/groups", body={"groups": groups}
        )
        return result

    async def set_disabled(self, name: str, disabled: bool) -> dict[str, Any]:
        """A disabled account's logins and tokens are refused; enabling it again lets its
        password and machine tokens log in, but revives no access token issued before."""
        result: dict[str, Any] = await self._json(
            "PUT", f"/users/{_segment(name)}/disabled", body={"disabled": disabled}
        )
        return result

    async def remove_user(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("DELETE", f"/users/{_segment(name)}")
        return result

    async def create_token(
        self, *, owner: str, name: str, scopes: list[str], expires_in: float | None
    ) -> dict[str, Any]:
        """The answer holds the token's `secret`: the only time anyone sees it."""
        body: dict[str, Any] = {"owner": owner, "name": name, "scopes": scopes}
        if expires_in is not None:
            body["expires_in"] = expires_in
        result: dict[str, Any] = await self._json("POST", "/tokens", body=body)
        return result

    async def tokens(self, owner: str | None = None) -> list[dict[str, Any]]:
        params = {"owner": owner} if owner else None
        result: dict[str, Any] = await self._json("GET", "/tokens", params=params)
        tokens: list[dict[str, Any]] = result["tokens"]
        return tokens

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("DELETE", f"/tokens/{_segment(token_id)}")
        return result

    async def audit(
        self, *, repository: str | None = None, since: float | str | None = None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first. `since` is epoch seconds or an age such as `24h`."""
        params = {"limit": str(limit)}
        if repository:
            params["repository"] = repository
        if since is not None:
            params["since"] = str(since)
        result: dict[str, Any] = await self._json("GET", "/audit", params=params)
        records: list[dict[str, Any]] = result["records"]
        return records


def _segment(value: str) -> str:
    """One path segment: a name with a `/` or `..` must not reach another route."""
    return quote(value, safe="")
