"""Signed tokens: access tokens per Docker's token specification, refresh tokens, and their
verification (ours and trusted external issuers').

Refresh tokens are JWTs too, signed by the same keys, with `regd_use: refresh` (an access
token never carries it, and a refresh token is never accepted as an access token). They
keep no state on the server: every replica can check one without a shared table, and
revocation comes from what they are bound to: `pwd`, a hash of the account's password hash
at issue time (changing the password voids them), the account still existing and being
enabled, or, for a login with a machine token, that token still being valid.

Access tokens carry the same `pwd` (and `regd_tok`, the machine token logged in with), so
that regd.auth.revocation can refuse one before it expires when what it was issued for is
revoked.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import itertools
import json
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from regd.auth.errors import Unauthenticated
from regd.auth.keys import ALGORITHM, KeyRing, libtrust_kid
from regd.auth.scopes import Scope, access_from_claim
from regd.clock import Clock
from regd.errors import ConfigError

# Defined with the account rows, which record the stamps a change voids; named here too, where
# the tokens that carry one are made.
from regd.metadata.accounts import password_stamp as password_stamp

ACCESS_TTL = 300.0
REFRESH_TTL = 30 * 86400.0
LEEWAY = 30.0
MAX_TOKEN_BYTES = 8192
# What verifiers accept: never `none`, never HMAC (a public key used as an HMAC secret is the
# classic confusion attack).
ACCEPTED_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384")
_REFRESH_USE = "refresh"
_MAX_CHAIN = 5


def rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: float


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """A verified access token."""

    issuer: str
    subject: str | None
    access: tuple[Scope, ...]
    expires_at: float
    token_id: str | None  # the machine token it was issued for, if any
    # Ours only (issued by this registry's token service), for its revocations to judge:
    own: bool = False
    issued_at: float | None = None
    password_stamp: str | None = None  # of the password logged in with, if any


@dataclass(frozen=True, slots=True)
class RefreshClaims:
    subject: str
    audience: str
    password_stamp: str | None
    machine_token: str | None


class TokenIssuer:
    """Signs tokens with the key ring's current key."""

    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        clock: Clock,
        *,
        access_ttl: float = ACCESS_TTL,
        refresh_ttl: float = REFRESH_TTL,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self._clock = clock
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def _sign(self, claims: dict[str, Any]) -> str:
        key = self.keys.current
        return jwt.encode(
            claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"}
        )

    def _base(self, subject: str | None, audience: str, ttl: float) -> dict[str, Any]:
        now = int(self._clock.now())
        return {
            "iss": self.issuer,
            "sub": subject or "",
            "aud": audience,
            "exp": now + int(ttl),
            "nbf": now,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
        }

    def access_token(
        self,
        subject: str | None,
        audience: str,
        access: Sequence[Scope],
        *,
        machine_token: str | None = None,
        password_stamp: str | None = None,
    ) -> IssuedToken:
        """`machine_token`: the id of the machine token the caller logged in with, so that
        what the access token does is audited under that token, and dies with it.
        `password_stamp`: of the password logged in with, so that a new password voids the
        token (regd.auth.revocation) and not the ones issued for the new one."""
        claims = self._base(subject, audience, self.access_ttl)
        claims["access"] = [scope.claim() for scope in access]
        if machine_token is not None:
            claims["regd_tok"] = machine_token
        if password_stamp is not None:
            claims["pwd"] = password_stamp
        return IssuedToken(self._sign(claims), int(self.access_ttl), float(claims["iat"]))

    def refresh_token(
        self,
        subject: str,
        audience: str,
        *,
        password_stamp: str | None = None,
        machine_token: str | None = None,
    ) -> str:
        claims = self._base(subject, audience, self.refresh_ttl)
        claims["regd_use"] = _REFRESH_USE
        if password_stamp is not None:
            claims["pwd"] = password_stamp
        if machine_token is not None:
            claims["regd_tok"] = machine_token
        return self._sign(claims)


# -- trusting keys ----------------------------------------------------------------------


class TrustedIssuer:
    """Another token service whose tokens regd accepts, as Distribution configures one:
    `issuer` (the `iss` it writes), `service` (the `aud` it writes for this registry), and
    its keys, from a certificate bundle (found by libtrust kid, or by an `x5c` chain that
    ends in one of the bundle's certificates) or from a JWKS file (found by kid)."""

    def __init__(
        self,
        issuer: str,
        service: str,
        keys: dict[str, PublicKeyTypes],
        roots: Sequence[x509.Certificate] = (),
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.keys = keys
        self.roots = list(roots)

    @classmethod
    def from_certificate_bundle(cls, issuer: str, service: str, path: Path) -> TrustedIssuer:
        try:
            roots = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read certificate bundle {path}: {exc}") from None
        keys: dict[str, PublicKeyTypes] = {
            libtrust_kid(cert.public_key()): cert.public_key() for cert in roots
        }
        return cls(issuer, service, keys, roots)

    @classmethod
    def from_jwks(cls, issuer: str, service: str, path: Path) -> TrustedIssuer:
        try:
            data = json.loads(path.read_text())
            keyset = jwt.PyJWKSet.from_dict(data)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ConfigError(f"cannot read JWKS file {path}: {exc}") from None
        keys: dict[str, PublicKeyTypes] = {}
        for key in keyset.keys:
            if key.key_id is None:
                raise ConfigError(f"JWKS file {path}: every key needs a kid")
            keys[key.key_id] = key.key
        return cls(issuer, service, keys)

    def key_for(self, header: dict[str, Any], now: float) -> PublicKeyTypes | None:
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self.keys:
            return self.keys[kid]
        chain = header.get("x5c")
        if chain is not None and self.roots:
            return self._from_chain(chain, now)
        return None

    def _from_chain(self, chain: Any, now: float) -> PublicKeyTypes:
        if not isinstance(chain, list) or not chain or len(chain) > _MAX_CHAIN:
            raise Unauthenticated("token's x5c header is not a certificate chain", "invalid_token")
        try:
            certs = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain]
        except (TypeError, ValueError):
            raise Unauthenticated(
                "token's x5c header holds a malformed certificate", "invalid_token"
            ) from None
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        for cert in certs:
            if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
                raise Unauthenticated("a certificate of the token's x5c chain is not valid now")
        try:
            for child, parent in itertools.pairwise(certs):
                child.verify_directly_issued_by(parent)
            last = certs[-1]
            if last not in self.roots:
                for root in self.roots:
                    try:
                        last.verify_directly_issued_by(root)
                        break
                    except (ValueError, TypeError, InvalidSignature):
                        continue
                else:
                    raise Unauthenticated(
                        "token's x5c chain does not end in a trusted certificate",
                        "invalid_token",
                    )
        except (ValueError, TypeError, InvalidSignature):
            raise Unauthenticated("token's x5c chain does not verify", "invalid_token") from None
        return certs[0].public_key()


class TokenVerifier:
    """Verifies access tokens: from our own key ring (issuer `issuer`, audience `service`)
    and from every trusted issuer. Verified tokens are remembered (bounded) until they
    expire, so a request with a token already seen costs no signature check."""

    def __init__(
        self,
        clock: Clock,
        *,
        own: KeyRing | None = None,
        issuer: str | None = None,
        service: str | None = None,
        trusted: Iterable[TrustedIssuer] = (),
        leeway: float = LEEWAY,
        cache_size: int = 10_000,
    ) -> None:
        if own is not None and (issuer is None or service is None):
            raise ValueError("own keys need the issuer and service they sign for")
        self._clock = clock
        self.own = own
        self.issuer = issuer
        self.service = service
        self.trusted = list(trusted)
        self.leeway = leeway
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, TokenClaims] = OrderedDict()
        self._last_reload = float("-inf")

    def _key(self, header: dict[str, Any], now: float) -> tuple[PublicKeyTypes, str, str]:
        kid = header.get("kid")
        if self.own is not None and isinstance(kid, str):
            assert self.issuer is not None
            assert self.service is not None
            key = self.own.by_kid(kid)
            if key is None and now - self._last_reload > 10:
                # Another replica sharing the key directory may have rotated.
                self._last_reload = now
                self.own.reload()
                key = self.own.by_kid(kid)
            if key is not None:
                return key.public_key, self.issuer, self.service
        for trusted in self.trusted:
            public = trusted.key_for(header, now)
            if public is not None:
                return public, trusted.issuer, trusted.service
        if kid is None and "x5c" not in header:
            raise Unauthenticated("token names no key (no kid, no x5c)", "invalid_token")
        raise Unauthenticated(f"token signed by an unknown key {str(kid)[:64]!r}", "invalid_token")

    def decode(self, token: str) -> dict[str, Any]:
        """Verify signature, algorithm, issuer, audience and times; the claims."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"token longer than {MAX_TOKEN_BYTES} bytes", "invalid_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token", "invalid_token") from None
        alg = header.get("alg")
        if alg not in ACCEPTED_ALGORITHMS:
            raise Unauthenticated(f"token algorithm {str(alg)[:16]!r} refused", "invalid_token")
        now = self._clock.now()
        key, issuer, service = self._key(header, now)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=[alg],
                audience=service,
                issuer=issuer,
                # Times are checked below against the injected clock.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud"],
                },
            )
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature does not verify", "invalid_token") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token is for another service", "invalid_token") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token from an untrusted issuer", "invalid_token") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}", "invalid_token") from None
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float | None):
            raise Unauthenticated("token times are not numbers", "invalid_token")
        if now > exp + self.leeway:
            raise Unauthenticated("token has expired", "invalid_token")
        if nbf is not None and now < nbf - self.leeway:
            raise Unauthenticated("token is not valid yet", "invalid_token")
        return claims

    def verify(self, token: str) -> TokenClaims:
        """An access token's claims; Unauthenticated (error `invalid_token`) otherwise."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        now = self._clock.now()
        if cached is not None:
            if now <= cached.expires_at + self.leeway:
                self._cache.move_to_end(digest)
                return cached
            del self._cache[digest]
        claims = self.decode(token)
        if claims.get("regd_use") is not None:
            raise Unauthenticated("a refresh token is not an access token", "invalid_token")
        sub = claims.get("sub")
        # The machine token behind it (ours only), not the JWT's own jti: an audit record
        # must name something an operator can list and revoke.
        own = self.own is not None and claims["iss"] == self.issuer
        tok = claims.get("regd_tok") if own else None
        iat, pwd = claims.get("iat"), claims.get("pwd")
        result = TokenClaims(
            issuer=str(claims["iss"]),
            subject=sub if isinstance(sub, str) and sub else None,
            access=tuple(access_from_claim(claims.get("access"))),
            expires_at=float(claims["exp"]),
            token_id=tok if isinstance(tok, str) else None,
            own=own,
            issued_at=float(iat) if isinstance(iat, int | float) else None,
            password_stamp=pwd if own and isinstance(pwd, str) else None,
        )
        self._cache[digest] = result
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def verify_refresh(self, token: str) -> RefreshClaims:
        """A refresh token we issued; Unauthenticated otherwise."""
        if self.own is None:
            raise Unauthenticated("this registry issues no refresh tokens")
        claims = self.decode(token)
        if claims.get("regd_use") != _REFRESH_USE or claims.get("iss") != self.issuer:
            raise Unauthenticated("not a refresh token of this registry", "invalid_grant")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("refresh token names no account", "invalid_grant")
        pwd, tok = claims.get("pwd"), claims.get("regd_tok")
        return RefreshClaims(
            subject=sub,
            audience=str(self.service),
            password_stamp=pwd if isinstance(pwd, str) else None,
            machine_token=tok if isinstance(tok, str) else None,
        )
