"""Machine tokens: long-lived secrets for CI jobs, usable as the password of Basic auth.

The secret is `regd_<id>_<43 random characters>` (256 random bits). It is stored as its
SHA-256, not with bcrypt: with 256 bits of entropy no guessing can succeed, so a slow hash
would add nothing but cost, and a fast one lets every request check it in microseconds. The
id in the secret finds the row, so the username given with it is only checked: it must be the
token's name or its owner's account name (either works, so `docker login -u ci` and
`-u alice` both do).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from regd.auth.policy import check_limits
from regd.clock import Clock
from regd.metadata import MetadataStore
from regd.metadata.accounts import MachineToken, add_machine_token

SECRET_PREFIX = "regd_"
_SECRET = re.compile(r"^regd_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_id_of(secret: str) -> str | None:
    """The token id inside a secret, or None if it is not shaped like one."""
    match = _SECRET.match(secret)
    return None if match is None else match.group(1)


def secret_matches(secret: str, token: MachineToken) -> bool:
    return hmac.compare_digest(secret_hash(secret), token.secret_hash)


async def create_machine_token(
    store: MetadataStore,
    clock: Clock,
    *,
    owner: str,
    name: str,
    scopes: Sequence[str],
    expires_in: float | None,
) -> tuple[MachineToken, str]:
    """Store a new token; returns it and its secret, which is shown once and never again.
    ValueError (one line) for a bad name or scope; NoSuchAccount for a missing owner."""
    if not _NAME.match(name):
        raise ValueError(f"bad token name {name[:64]!r}: [a-z0-9._-], at most 64 characters")
    if not scopes:
        raise ValueError("a machine token needs at least one scope")
    check_limits(scopes)
    if expires_in is not None and expires_in <= 0:
        raise ValueError("a token's lifetime must be positive")
    token_id = secrets.token_hex(8)
    secret = f"{SECRET_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    now = clock.now()
    token = MachineToken(
        id=token_id,
        name=name,
        owner=owner,
        scopes=tuple(scopes),
        secret_hash=secret_hash(secret),
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
        last_used_at=None,
        revoked=False,
    )
    await add_machine_token(store, token)
    return token, secret
