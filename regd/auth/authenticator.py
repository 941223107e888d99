"""The one object the HTTP edge talks to: who is asking, how to challenge, the token
service's answers, and the audit trail."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from regd.auth.errors import Forbidden, Unauthenticated
from regd.auth.identity import ANONYMOUS, Identity, Via
from regd.auth.machine import secret_matches, token_id_of
from regd.auth.passwords import CredentialCache, verify_password
from regd.auth.policy import Policy
from regd.auth.revocation import Revocations
from regd.auth.scopes import (
    ADMIN,
    CATALOG,
    REGISTRY_RIGHTS,
    REPOSITORY_ACTIONS,
    Scope,
    parse_scopes,
)
from regd.auth.throttle import LoginThrottle
from regd.auth.tokens import (
    MAX_TOKEN_BYTES,
    TokenIssuer,
    TokenVerifier,
    password_stamp,
    rfc3339,
)
from regd.clock import Clock
from regd.metadata import MetadataStore
from regd.metadata import accounts as rows

MAX_AUTHORIZATION_BYTES = MAX_TOKEN_BYTES
# last_used_at of a machine token is written at most this often per process.
_TOUCH_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Login:
    """A checked user and password: who it is, and (for an account's password) the stamp a
    refresh or access token is bound to. `checked_at`: when the check began, for a remembered
    login to be judged against revocations made since."""

    identity: Identity
    stamp: str | None
    checked_at: float = 0.0


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Authenticator:
    """Authentication and authorization for one registry.

    realm/service: the token service's URL and name, written into Bearer challenges; with
    `issuer` None and no `verifier`, regd challenges with Basic only. `htpasswd` maps users
    to bcrypt hashes read from an htpasswd file; such users come before database accounts.
    `revocations` refuses access tokens and remembered logins whose credentials were revoked
    since they were made (by default, read from `store`).
    """

    def __init__(
        self,
        store: MetadataStore,
        policy: Policy,
        clock: Clock,
        *,
        realm: str,
        service: str,
        issuer: TokenIssuer | None = None,
        verifier: TokenVerifier | None = None,
        htpasswd: Mapping[str, str] | None = None,
        throttle: LoginThrottle | None = None,
        cache: CredentialCache[Login] | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.realm = realm
        self.service = service
        self.issuer = issuer
        self.verifier = verifier
        self.htpasswd = dict(htpasswd or {})
        self.throttle = throttle or LoginThrottle(clock)
        self.cache: CredentialCache[Login] = cache or CredentialCache(clock)
        self.revocations = revocations or Revocations(store, clock)
        self._touched: dict[str, float] = {}

    @property
    def bearer(self) -> bool:
        """Whether challenges send clients to a token service (else Basic)."""
        return self.issuer is not None or self.verifier is not None

    # -- who is asking ------------------------------------------------------------------

    async def authenticate(
        self,
        authorization: str | None,
        remote_addr: str,
        client_cert_subject: str | None = None,
    ) -> Identity:
        """The caller of one request. No Authorization header: the account a verified client
        certificate names, else anonymous. Unauthenticated for bad credentials, Throttled
        after too many failures."""
        if authorization is None or not authorization.strip():
            if client_cert_subject is not None:
                return await self._certificate(client_cert_subject)
            return ANONYMOUS
        if len(authorization) > MAX_AUTHORIZATION_BYTES:
            raise Unauthenticated(
                f"Authorization header longer than {MAX_AUTHORIZATION_BYTES} bytes"
            )
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "basic":
            user, password = _basic(value)
            return (await self.login(user, password, remote_addr)).identity
        if scheme == "bearer":
            if self.verifier is None:
                raise Unauthenticated("this registry accepts no Bearer tokens")
            claims = self.verifier.verify(value)
            if claims.own:
                # Only this registry's tokens: another issuer revokes its own.
                revocations = self.revocations
                if not revocations.current():
                    await revocations.catch_up()
                if revocations.voids_token(claims):
                    raise Unauthenticated(
                        "token revoked: what it was issued for was revoked or changed",
                        "invalid_token",
                    )
            return Identity(
                claims.subject, Via.BEARER, grants=claims.access, token_id=claims.token_id
            )
        raise Unauthenticated(f"unsupported authorization scheme {scheme[:20]!r}")

    async def login(self, user: str, password: str, remote_addr: str) -> Login:
        """Check a user and password (an account's, or a machine token's secret)."""
        key = self.cache.key(user, password)
        cached = self.cache.get(key)
        if cached is not None:
            revocations = self.revocations
            if not revocations.current():
                await revocations.catch_up()
            who = cached.identity
            if not revocations.voids_login(who.name, who.token_id, cached.stamp, cached.checked_at):
                return cached
            # Revoked since: checked again, which refuses it unless it was made good since.
            self.cache.discard(key)
        self.throttle.check(user, remote_addr)
        started = self.clock.now()
        login = await self._check(user, password)
        if login is None:
            self.throttle.failed(user, remote_addr)
            await self.record("login", None, remote_addr, "failure", detail=f"user {user[:64]!r}")
            raise Unauthenticated("wrong user name or password")
        self.throttle.succeeded(user)
        login = replace(login, checked_at=started)
        self.cache.put(key, login)
        return login

    async def _check(self, user: str, password: str) -> Login | None:
        token_id = token_id_of(password)
        if token_id is not None:
            return await self._machine(user, password, token_id)
        hashed = self.htpasswd.get(user)
        if hashed is not None:
            if await verify_password(password, hashed):
                return Login(Identity(user, Via.PASSWORD), password_stamp(hashed))
            return None
        account = await rows.get_account(self.store, user)
        ok = await verify_password(password, None if account is None else account.password_hash)
        if not ok or account is None or account.disabled:
            return None
        identity = Identity(user, Via.PASSWORD, frozenset(account.groups))
        return Login(identity, password_stamp(account.password_hash))

    async def _machine(self, user: str, secret: str, token_id: str) -> Login | None:
        token = await rows.get_machine_token(self.store, token_id)
        if (
            token is None
            or not secret_matches(secret, token)
            or user
            not in (
                token.name,
                token.owner,
            )
        ):
            return None
        now = self.clock.now()
        if token.revoked or (token.expires_at is not None and token.expires_at <= now):
            return None
        account = await rows.get_account(self.store, token.owner)
        if account is None or account.disabled:
            return None
        if now - self._touched.get(token.id, float("-inf")) >= _TOUCH_INTERVAL:
            self._touched[token.id] = now
            if len(self._touched) > 10_000:
                self._touched.clear()
            await rows.touch_machine_token(self.store, token.id, now)
        identity = Identity(
            token.owner,
            Via.MACHINE_TOKEN,
            frozenset(account.groups),
            limits=token.scopes,
            token_id=token.id,
        )
        return Login(identity, None)

    async def _certificate(self, subject: str) -> Identity:
        account = await rows.get_account(self.store, subject)
        if account is None or account.disabled:
            raise Unauthenticated(f"client certificate names no enabled account {subject[:64]!r}")
        return Identity(subject, Via.CLIENT_CERTIFICATE, frozenset(account.groups))

    # -- what it may do -----------------------------------------------------------------

    def allowed_actions(self, identity: Identity, repository: str) -> frozenset[str]:
        return self.policy.allowed_actions(identity, repository)

    def may(self, identity: Identity, action: str, repository: str | None = None) -> bool:
        return self.policy.may(identity, action, repository)

    def grant(self, identity: Identity, asked: Iterable[Scope]) -> list[Scope]:
        """Asked ∩ allowed: never an error for asking too much."""
        out = []
        for scope in asked:
            actions: frozenset[str] | None
            if scope.type == "repository":
                wanted = REPOSITORY_ACTIONS if "*" in scope.actions else scope.actions
                actions = wanted & self.allowed_actions(identity, scope.name)
            elif scope.type == "registry" and scope.name in REGISTRY_RIGHTS:
                actions = frozenset({"*"}) if self.policy.has_right(identity, scope.name) else None
            else:
                actions = None
            if actions:
                out.append(Scope(scope.type, scope.name, frozenset(actions), scope.resource_class))
        return out

    # -- challenges ---------------------------------------------------------------------

    def challenge(
        self,
        scope_needed: Sequence[Scope] | None = None,
        error: str | None = None,
        *,
        realm: str | None = None,
    ) -> str:
        """The WWW-Authenticate value for a 401 (or a 403 with insufficient_scope).
        `realm` overrides the configured one (e.g. derived from the request's Host)."""
        realm = realm or self.realm
        if not self.bearer:
            return f"Basic realm={_quote(realm)}"
        parts = [f"realm={_quote(realm)}", f"service={_quote(self.service)}"]
        if scope_needed:
            parts.append(f"scope={_quote(' '.join(str(s) for s in scope_needed))}")
        if error is not None:
            parts.append(f"error={_quote(error)}")
        return "Bearer " + ",".join(parts)

    @staticmethod
    def scope_for(repository: str | None, actions: Iterable[str]) -> Scope:
        """The scope a challenge names for an action on a repository (or the catalog/admin
        right when `repository` is None)."""
        acts = frozenset(actions)
        if repository is None:
            name = ADMIN if ADMIN in acts else CATALOG
            return Scope("registry", name, frozenset({"*"}))
        return Scope("repository", repository, acts)

    # -- the token service --------------------------------------------------------------

    def _issuer(self, service: str | None) -> TokenIssuer:
        if self.issuer is None:
            raise Forbidden("this registry runs no token service")
        if service is not None and service != self.service:
            raise Forbidden(f"unknown service {service[:100]!r}")
        return self.issuer

    async def token_response(
        self,
        identity: Identity,
        *,
        service: str | None,
        scopes: Sequence[str],
        offline_token: bool = False,
        login: Login | None = None,
    ) -> dict[str, Any]:
        """GET /token: `identity` from `authenticate` (Basic or none). For a refresh token
        (offline_token=true) pass the `login` result of `login()` instead of deriving it."""
        issuer = self._issuer(service)
        granted = self.grant(identity, parse_scopes(scopes))
        issued = issuer.access_token(
            identity.name,
            self.service,
            granted,
            machine_token=identity.token_id,
            password_stamp=None if login is None else login.stamp,
        )
        answer: dict[str, Any] = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": rfc3339(issued.issued_at),
        }
        if (
            offline_token
            and identity.name is not None
            and identity.via
            in (
                Via.PASSWORD,
                Via.MACHINE_TOKEN,
            )
        ):
            answer["refresh_token"] = issuer.refresh_token(
                identity.name,
                self.service,
                password_stamp=None if login is None else login.stamp,
                machine_token=identity.token_id,
            )
        return answer

    async def basic_token_response(
        self,
        authorization: str | None,
        remote_addr: str,
        *,
        service: str | None,
        scopes: Sequence[str],
        offline_token: bool = False,
    ) -> dict[str, Any]:
        """GET /token in one call: Basic credentials (or none) to the JSON answer."""
        login: Login | None = None
        if authorization is not None and authorization.strip():
            if len(authorization) > MAX_AUTHORIZATION_BYTES:
                raise Unauthenticated("Authorization header too long")
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "basic":
                raise Unauthenticated("the token service takes Basic credentials")
            user, password = _basic(value.strip())
            login = await self.login(user, password, remote_addr)
        identity = ANONYMOUS if login is None else login.identity
        return await self.token_response(
            identity, service=service, scopes=scopes, offline_token=offline_token, login=login
        )

    async def oauth_token(self, form: Mapping[str, str], remote_addr: str) -> dict[str, Any]:
        """POST /token (application/x-www-form-urlencoded): grant_type password or
        refresh_token. Unauthenticated for bad credentials (answer 401), Forbidden for a
        request this service does not serve."""
        issuer = self._issuer(form.get("service"))
        grant_type = form.get("grant_type")
        if grant_type == "password":
            login = await self.login(
                form.get("username", ""), form.get("password", ""), remote_addr
            )
            refresh = issuer.refresh_token(
                login.identity.name or "",
                self.service,
                password_stamp=login.stamp,
                machine_token=login.identity.token_id,
            )
        elif grant_type == "refresh_token":
            refresh = form.get("refresh_token", "")
            login = await self._refreshed(refresh)
        else:
            raise Forbidden(f"unsupported grant_type {str(grant_type)[:32]!r}")
        identity = login.identity
        granted = self.grant(identity, parse_scopes([form.get("scope", "")]))
        issued = issuer.access_token(
            identity.name,
            self.service,
            granted,
            machine_token=identity.token_id,
            password_stamp=login.stamp,
        )
        return {
            "access_token": issued.token,
            "token": issued.token,
            "scope": " ".join(str(s) for s in granted),
            "expires_in": issued.expires_in,
            "issued_at": rfc3339(issued.issued_at),
            "refresh_token": refresh,
        }

    async def _refreshed(self, refresh: str) -> Login:
        if self.verifier is None:
            raise Unauthenticated("this registry issues no refresh tokens")
        claims = self.verifier.verify_refresh(refresh)
        refused = Unauthenticated("refresh token no longer valid; log in again", "invalid_grant")
        if claims.machine_token is not None:
            token = await rows.get_machine_token(self.store, claims.machine_token)
            now = self.clock.now()
            if token is None or token.revoked or token.owner != claims.subject:
                raise refused
            if token.expires_at is not None and token.expires_at <= now:
                raise refused
            account = await rows.get_account(self.store, token.owner)
            if account is None or account.disabled:
                raise refused
            identity = Identity(
                token.owner,
                Via.MACHINE_TOKEN,
                frozenset(account.groups),
                limits=token.scopes,
                token_id=token.id,
            )
            return Login(identity, None)
        hashed = self.htpasswd.get(claims.subject)
        groups: frozenset[str] = frozenset()
        if hashed is None:
            account = await rows.get_account(self.store, claims.subject)
            if account is None or account.disabled:
                raise refused
            hashed, groups = account.password_hash, frozenset(account.groups)
        if claims.password_stamp != password_stamp(hashed):
            raise refused
        return Login(Identity(claims.subject, Via.PASSWORD, groups), claims.password_stamp)

    # -- audit --------------------------------------------------------------------------

    async def record(
        self,
        action: str,
        identity: Identity | None,
        remote_addr: str | None,
        outcome: str,
        *,
        repository: str | None = None,
        reference: str | None = None,
        detail: str | None = None,
    ) -> None:
        """One audit row: action e.g. push, tag, delete-tag, delete-manifest,
        delete-repository, login; outcome e.g. success, failure, denied. Never pass a
        secret in `detail`."""
        await rows.add_audit(
            self.store,
            rows.AuditRecord(
                ts=self.clock.now(),
                actor=None if identity is None else identity.actor,
                action=action,
                outcome=outcome,
                repository=repository,
                reference=reference,
                remote_addr=remote_addr,
                detail=detail,
            ),
        )


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Unauthenticated("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise Unauthenticated("malformed Basic credentials: expected user:password")
    return user, password
