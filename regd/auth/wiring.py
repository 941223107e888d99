"""Start-up: whether authentication is on, and the Authenticator the configuration describes.

Authentication is on when any of these holds at start-up:
- `auth.htpasswd` names a file, or `[[auth.trust]]` names another token service;
- `[[access]]` rules are given;
- the metadata database stores at least one account.
Otherwise (a fresh install) regd serves everyone, as before accounts existed, and only on a
loopback address unless `auth.open = true`. Adding the first account to a running open
registry takes effect when it restarts.

With authentication on and no `[[access]]` rules, DEFAULT_ACCESS applies.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from regd.auth.authenticator import Authenticator
from regd.auth.keys import KeyRing
from regd.auth.passwords import load_htpasswd
from regd.auth.policy import Policy
from regd.auth.tokens import TokenIssuer, TokenVerifier, TrustedIssuer
from regd.clock import SYSTEM_CLOCK, Clock
from regd.config import Config, TrustedIssuerConfig
from regd.errors import ConfigError
from regd.metadata import MetadataStore
from regd.metadata.accounts import has_accounts

# Every account may use every repository and list them; the admin API is for the `admin`
# group (and for `admin_token`).
DEFAULT_ACCESS: tuple[dict[str, Any], ...] = (
    {
        "who": "authenticated",
        "repositories": ["**"],
        "actions": ["pull", "push", "delete", "catalog"],
    },
    {"who": "group:admin", "actions": ["admin"]},
)


def auth_enabled(config: Config, store: MetadataStore) -> bool:
    """Blocking (one query): for start-up only."""
    return config.auth_configured or has_accounts(store)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config) -> None:
    """Refuse to serve everyone on a non-loopback address unless that is asked for."""
    if config.auth_open or is_loopback(config.host):
        return
    store = MetadataStore(config.database_url)
    try:
        enabled = auth_enabled(config, store)
    finally:
        store.engine.dispose()
    if not enabled:
        raise ConfigError(
            f"refusing to serve {config.addr} without authentication: add accounts, "
            "auth.htpasswd or [[access]] rules, or set auth.open = true (REGD_AUTH_OPEN=1) "
            "to serve everyone"
        )


def build_authenticator(
    config: Config, store: MetadataStore, clock: Clock = SYSTEM_CLOCK
) -> Authenticator | None:
    """The Authenticator for `config`, or None when authentication is off. Blocking (key
    files, the htpasswd file, one query): call before serving, in every worker."""
    if not auth_enabled(config, store):
        return None
    keys = KeyRing.open(config.auth_keys_dir, config.auth_issuer, clock)
    issuer = TokenIssuer(keys, config.auth_issuer, clock, access_ttl=config.auth_token_ttl)
    trusted = [_trusted(entry) for entry in config.auth_trust]
    verifier = TokenVerifier(
        clock, own=keys, issuer=config.auth_issuer, service=config.auth_service, trusted=trusted
    )
    policy = Policy.parse(config.access or DEFAULT_ACCESS)
    users = None if config.auth_htpasswd is None else load_htpasswd(config.auth_htpasswd)
    return Authenticator(
        store,
        policy,
        clock,
        realm=config.auth_realm or "",
        service=config.auth_service,
        issuer=issuer,
        verifier=verifier,
        htpasswd=users,
    )


def _trusted(entry: TrustedIssuerConfig) -> TrustedIssuer:
    if entry.certificates is not None:
        return TrustedIssuer.from_certificate_bundle(
            entry.issuer, entry.service, entry.certificates
        )
    # The configuration admits an entry only with a certificate bundle or a JWKS file.
    assert entry.jwks is not None
    return TrustedIssuer.from_jwks(entry.issuer, entry.service, entry.jwks)
