"""Who is asking: the one value the HTTP edge hands to the policy and the registry layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from regd.auth.scopes import Scope


class Via(enum.Enum):
    ANONYMOUS = "anonymous"
    PASSWORD = "password"  # Basic with an account's password (database or htpasswd)
    MACHINE_TOKEN = "machine-token"  # Basic with a machine token's secret
    BEARER = "bearer"  # a verified JWT, ours or a trusted issuer's
    CLIENT_CERTIFICATE = "client-certificate"  # a client certificate the TLS layer verified


@dataclass(frozen=True, slots=True)
class Identity:
    """`name` is the account (None for anonymous; a Bearer token's `sub`).

    `grants` is set for Bearer tokens only: the token's `access` claim is then all the caller
    may do, and the policy is not asked again. `limits` is set for machine tokens: the token's
    scope patterns, which narrow what the policy gives its owner.
    """

    name: str | None
    via: Via
    groups: frozenset[str] = frozenset()
    grants: tuple[Scope, ...] | None = None
    limits: tuple[str, ...] | None = None
    token_id: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.via is not Via.ANONYMOUS

    @property
    def actor(self) -> str:
        """How audit records and logs name the caller."""
        if self.name is None:
            return "anonymous"
        if self.token_id is not None:
            return f"{self.name} (token {self.token_id})"
        return self.name


ANONYMOUS = Identity(None, Via.ANONYMOUS)
