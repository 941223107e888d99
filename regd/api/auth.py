"""Authentication at the HTTP edge: every request is authenticated once, here, and the policy
is asked for the one action its route needs. Both dispatchers call `Gate.admit` (the direct
router through `admit_direct`, Quart through the before-request hook `install` adds); a
refusal becomes `Refused`, which each dispatcher sends as it is.

What a route needs (`Need`):
- GET /v2/: any authenticated caller (a 401 with the challenge is how clients learn to log in);
- GET/HEAD manifests, blobs, tags/list, referrers: pull on the repository;
- PUT manifests (a new tag, or moving an existing one: push is enough, as in Distribution),
  and every method on blob uploads (including a session's status and cancellation): push;
- DELETE manifests, tags and blobs: delete;
- GET /v2/_catalog: the catalog right (and the listing holds only what the caller may pull);
- /admin/v1/...: the admin right, or `Authorization: Bearer <admin_token>`;
- /auth/... (the token service): nothing;
- any other route: an authenticated caller.
With authentication off there is no Gate: nothing here runs and no request awaits anything more.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from quart import Response, g, request

from regd.api.errors import error_body
from regd.auth import Authenticator, Identity, Scope, Via
from regd.auth.errors import AuthError, Forbidden, Throttled, Unauthenticated
from regd.auth.scopes import ADMIN, CATALOG, DELETE, PULL, PUSH
from regd.errors import BackendError

if TYPE_CHECKING:
    import re

    from regd.api.direct import Request

log = logging.getLogger("regd.auth")

# What a Need with this action asks for: the caller must have logged in, nothing more.
AUTHENTICATED = "authenticated"
TOKEN_PATH = "/auth/token"

# Who calls the admin API with the configured admin_token: that right and no other.
ADMIN_TOKEN_IDENTITY = Identity(
    "admin-token", Via.BEARER, grants=(Scope("registry", ADMIN, frozenset({"*"})),)
)


@dataclass(frozen=True, slots=True)
class Need:
    action: str
    repository: str | None = None

    def scope(self) -> Scope | None:
        """The scope a challenge names (None for a plain log-in)."""
        if self.action == AUTHENTICATED:
            return None
        if self.repository is None:
            return Scope("registry", self.action, frozenset({"*"}))
        # Clients that push ask for pull too (they check which blobs exist).
        actions = {PULL, PUSH} if self.action == PUSH else {self.action}
        return Scope("repository", self.repository, frozenset(actions))

    def detail(self) -> list[dict[str, str]] | None:
        if self.action == AUTHENTICATED:
            return None
        if self.repository is None:
            return [{"Type": "registry", "Name": self.action, "Action": "*"}]
        return [{"Type": "repository", "Name": self.repository, "Action": self.action}]


class Refused(Exception):
    """A request the gate turned away, answered as it stands (401, 403 or 429)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers
        self.body = body


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is asking, as handlers and the registry layer's filters see it."""

    identity: Identity
    authenticator: Authenticator
    remote_addr: str | None

    def may(self, action: str, repository: str | None = None) -> bool:
        return self.authenticator.may(self.identity, action, repository)

    def may_pull(self, repository: str) -> bool:
        return self.authenticator.may(self.identity, PULL, repository)

    async def audit(
        self, action: str, repository: str | None, reference: str | None = None
    ) -> None:
        """Record a change that has already succeeded. A failing audit write is logged and
        does not turn the change's answer into an error."""
        try:
            await self.authenticator.record(
                action,
                self.identity,
                self.remote_addr,
                "success",
                repository=repository,
                reference=reference,
            )
        except BackendError as exc:
            log.error("audit record failed action=%s repository=%s: %s", action, repository, exc)


def realm_of(configured: str, scheme: str, host: str | None) -> str:
    """The token service's URL: configured, else this server's own, as the client reached it."""
    if configured:
        return configured
    host = (host or "localhost")[:255]
    return f"{'https' if scheme in ('https', 'wss') else 'http'}://{host}{TOKEN_PATH}"


class Gate:
    """Authentication and authorization of every request, for both dispatchers."""

    def __init__(self, authenticator: Authenticator, *, admin_token: str | None) -> None:
        self.authenticator = authenticator
        self._admin_token = None if admin_token is None else f"Bearer {admin_token}".encode()

    async def admit(
        self,
        need: Need,
        authorization: str | None,
        remote_addr: str | None,
        client_cert_subject: str | None = None,
    ) -> Viewer:
        """The caller, allowed what `need` asks; AuthError otherwise. `client_cert_subject`
        is the name a verified TLS client certificate gives (mutual TLS), if any."""
        auth = self.authenticator
        if (
            need.action == ADMIN
            and self._admin_token is not None
            and authorization is not None
            and hmac.compare_digest(authorization.strip().encode(), self._admin_token)
        ):
            return Viewer(ADMIN_TOKEN_IDENTITY, auth, remote_addr)
        identity = await auth.authenticate(authorization, remote_addr or "", client_cert_subject)
        if need.action == AUTHENTICATED:
            if not identity.authenticated:
                raise Unauthenticated("authentication required")
        elif not auth.may(identity, need.action, need.repository):
            what = need.action if need.repository is None else f"{need.action} {need.repository}"
            if identity.authenticated:
                raise Forbidden(f"{identity.actor} may not {what}")
            raise Unauthenticated(f"authentication required to {what}")
        return Viewer(identity, auth, remote_addr)

    def refusal(self, error: AuthError, need: Need | None, realm: str) -> Refused:
        """The answer to a refused request: 401 with a challenge, 403 DENIED (with an
        insufficient_scope challenge), or 429 with Retry-After."""
        auth = self.authenticator
        scope = None if need is None else need.scope()
        scopes = [] if scope is None else [scope]
        detail = None if need is None else need.detail()
        headers = {"content-type": "application/json"}
        if isinstance(error, Throttled):
            headers["retry-after"] = str(error.retry_after)
            return Refused(429, headers, error_body("TOOMANYREQUESTS", error.message, None))
        if isinstance(error, Unauthenticated):
            headers["www-authenticate"] = auth.challenge(scopes, error=error.error, realm=realm)
            return Refused(401, headers, error_body("UNAUTHORIZED", error.message, detail))
        if scopes:
            headers["www-authenticate"] = auth.challenge(
                scopes, error="insufficient_scope", realm=realm
            )
        return Refused(403, headers, error_body("DENIED", error.message, detail))

    # -- the direct router ---------------------------------------------------------------

    async def admit_direct(
        self, request: Request, match: re.Match[str], scope: Mapping[str, Any]
    ) -> Request:
        """`request` with its viewer; Refused when the caller may not. Every direct route
        is /v2/<name>/blobs/... or /v2/<name>/manifests/..., the name its first group."""
        need = direct_need(request.method, request.path, match[1])
        client = scope.get("client")
        remote = client[0] if client else None
        try:
            viewer = await self.admit(need, request.headers.get("authorization"), remote)
        except AuthError as error:
            realm = realm_of(
                self.authenticator.realm, scope.get("scheme", "http"), request.headers.get("host")
            )
            raise self.refusal(error, need, realm) from None
        return replace(request, viewer=viewer)


def direct_need(method: str, path: str, repository: str) -> Need:
    if path.startswith(f"/v2/{repository}/blobs/uploads"):
        return Need(PUSH, repository)
    if method in ("GET", "HEAD"):
        return Need(PULL, repository)
    if method == "DELETE":
        return Need(DELETE, repository)
    return Need(PUSH, repository)


def quart_need(endpoint: str | None, blueprint: str | None, args: Mapping[str, Any]) -> Need | None:
    """What a Quart route needs; None for the token service and for requests that matched
    no route (answered 404 or 405)."""
    if endpoint is None or blueprint == "token":
        return None
    if blueprint in ("admin", "accounts"):
        return Need(ADMIN)
    if endpoint == "listings.catalog":
        return Need(CATALOG)
    if endpoint in ("listings.tags_list", "listings.referrers"):
        return Need(PULL, str(args.get("name", "")))
    return Need(AUTHENTICATED)


def install(app: Any, gate: Gate) -> None:
    """Authenticate every Quart request (the direct router gets the gate itself)."""
    from regd.api import token

    app.config["REGD_AUTH"] = gate
    app.register_blueprint(token.bp)

    async def admit() -> None:
        rule = request.url_rule
        need = quart_need(
            None if rule is None else rule.endpoint, request.blueprint, request.view_args or {}
        )
        if need is None:
            g.viewer = None
            return
        authorization = request.headers.get("Authorization")
        try:
            g.viewer = await gate.admit(need, authorization, request.remote_addr)
        except AuthError as error:
            realm = realm_of(gate.authenticator.realm, request.scheme, request.host)
            raise gate.refusal(error, need, realm) from None

    async def refused(error: Refused) -> Response:
        return Response(error.body, status=error.status, headers=error.headers)

    app.before_request(admit)
    app.register_error_handler(Refused, refused)


def viewer() -> Viewer | None:
    """The caller of the current Quart request; None when authentication is off."""
    current: Viewer | None = g.get("viewer")
    return current


__all__ = [
    "Gate",
    "Need",
    "Refused",
    "Viewer",
    "install",
    "quart_need",
    "realm_of",
    "viewer",
]
