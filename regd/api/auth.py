"""Authentication at the HTTP edge: every request is authenticated once, and the policy is
asked for the one action its path needs. `Gate.admit_exchange` is that one check: it runs in
`RegdApp.__call__` right after the request's Exchange is made, before either dispatcher
sees the request, and puts the caller on the Exchange (`x.viewer`). A refusal is a
RegistryError carrying its WWW-Authenticate or Retry-After header, answered by
regd.api.errors like every other error.

What a route needs (`Need`):
- GET /v2/: any authenticated caller (a 401 with the challenge is how clients learn to log in);
- GET/HEAD manifests, blobs, tags/list, referrers: pull on the repository;
- PUT manifests (a new tag, or moving an existing one: push is enough, as in Distribution),
  and every method on blob uploads (including a session's status and cancellation): push;
- DELETE manifests, tags and blobs: delete;
- GET /v2/_catalog: the catalog right (and the listing holds only what the caller may pull);
- /admin/v1/...: the admin right, or `Authorization: Bearer <admin_token>`;
- /auth/... (the token service), /healthz and /readyz (load balancers' probes): nothing;
- /ui/... (the web UI): nothing here; it authenticates its own requests by their session
  cookie and asks the same policy (regd.ui);
- /metrics: the admin right, or `Authorization: Bearer <admin_token>`, as the admin API;
- any other route: an authenticated caller.
With authentication off there is no Gate: nothing here runs and no request awaits anything more.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from regd.auth import Authenticator, Identity, Scope, Via
from regd.auth.errors import AuthError, Forbidden, Throttled, Unauthenticated
from regd.auth.scopes import ADMIN, CATALOG, DELETE, PULL, PUSH
from regd.errors import BackendError, Denied, RegistryError, TooManyRequests, Unauthorized

if TYPE_CHECKING:
    from regd.api.exchange import Exchange
    from regd.observability.metrics import Metrics

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

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        admin_token: str | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.authenticator = authenticator
        self._admin_token = None if admin_token is None else f"Bearer {admin_token}".encode()
        self._metrics = metrics

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

    async def admit_exchange(
        self, x: Exchange, scope: Mapping[str, Any], client_cert_subject: str | None
    ) -> None:
        """Decide who is asking for `x` and whether they may: the one check every request
        passes, made in `RegdApp.__call__` before either dispatcher runs. Sets `x.viewer`
        (None for the token service, which authenticates by itself) and `x.user`; raises
        the RegistryError that answers a refusal."""
        need = need_for(x.method, x.path)
        if need is None:
            return
        authorization = host = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
        try:
            viewer = await self.admit(need, authorization, x.remote, client_cert_subject)
        except AuthError as error:
            realm = realm_of(self.authenticator.realm, scope.get("scheme", "http"), host)
            presented = authorization is not None or client_cert_subject is not None
            raise self.refusal(error, need, realm, credentials=presented) from None
        x.viewer = viewer
        x.user = viewer.identity.actor

    def refusal(
        self, error: AuthError, need: Need | None, realm: str, *, credentials: bool = True
    ) -> RegistryError:
        """The error that answers a refused request (regd.api.errors renders it): 401 with a
        challenge, 403 DENIED (with an insufficient_scope challenge), or 429 with
        Retry-After. `credentials`: whether the request carried any; a refusal of one that
        did not is how clients learn to log in, not a failure worth counting."""
        auth = self.authenticator
        if self._metrics is not None:
            if isinstance(error, Throttled):
                self._metrics.refused("throttled")
            elif credentials:
                reason = "unauthenticated" if isinstance(error, Unauthenticated) else "denied"
                self._metrics.refused(reason)
        scope = None if need is None else need.scope()
        scopes = [] if scope is None else [scope]
        detail = None if need is None else need.detail()
        answer: RegistryError
        if isinstance(error, Throttled):
            answer = TooManyRequests(error.message)
            answer.headers["retry-after"] = str(error.retry_after)
        elif isinstance(error, Unauthenticated):
            answer = Unauthorized(error.message, detail)
            answer.headers["www-authenticate"] = auth.challenge(
                scopes, error=error.error, realm=realm
            )
        else:
            answer = Denied(error.message, detail)
            if scopes:
                answer.headers["www-authenticate"] = auth.challenge(
                    scopes, error="insufficient_scope", realm=realm
                )
        return answer


# The routes, by path, as both dispatchers match them (greedy names, as regd.api.direct's).
_UPLOADS = re.compile(r"^/v2/(.+)/blobs/uploads(?:/[^/]*)?$")
_CONTENT = re.compile(r"^/v2/(.+)/(?:blobs|manifests)/[^/]+$")
_LISTING = re.compile(r"^/v2/(.+)/(?:tags/list|referrers/[^/]+)/?$")


def canonical(path: str) -> str:
    """`path` without repeated or trailing slashes: the form in which the admin API and
    metrics are recognized, because the router does not insist on the exact form
    (`/metrics/` reaches /metrics) and a check of the exact form would let the other in."""
    return "/" + "/".join(part for part in path.split("/") if part)


def is_admin_path(path: str) -> bool:
    """Whether `path` reaches the admin API or the metrics, in any spelling."""
    path = canonical(path)
    return path in ("/admin", "/metrics") or path.startswith("/admin/")


def need_for(method: str, path: str) -> Need | None:
    """What a request needs; None for the token service and the UI. A path that names no route needs
    a logged-in caller (who is then told it does not exist)."""
    # Leading slashes are collapsed before the gate (regd.app), so a path under /v2/ is
    # never the admin API: the registry API's requests skip the spelling check.
    if not path.startswith("/v2/") and is_admin_path(path):
        return Need(ADMIN)
    if path.startswith(("/auth/", "/ui/")) or path in ("/ui", "/healthz", "/readyz"):
        return None
    if path.rstrip("/") == "/v2/_catalog":
        return Need(CATALOG)
    match = _UPLOADS.match(path)
    if match is not None:
        return Need(PUSH, match[1])
    match = _CONTENT.match(path)
    if match is not None:
        if method in ("GET", "HEAD"):
            return Need(PULL, match[1])
        if method == "DELETE":
            return Need(DELETE, match[1])
        return Need(PUSH, match[1])
    match = _LISTING.match(path)
    if match is not None:
        return Need(PULL, match[1])
    return Need(AUTHENTICATED)


def install(app: Any, gate: Gate) -> None:
    """Serve the token service and tell the admin API that the gate guards it; the gate
    itself runs in `RegdApp.__call__`."""
    from regd.api import token

    app.config["REGD_AUTH"] = gate
    app.register_blueprint(token.bp)


__all__ = [
    "Gate",
    "Need",
    "Viewer",
    "canonical",
    "install",
    "is_admin_path",
    "need_for",
    "realm_of",
]
