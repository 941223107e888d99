"""auth (regd.auth wiring): the `[auth]` table and `[[access]]` rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regd.config._parsing import _json_list
from regd.errors import ConfigError

AUTH_KEYS = ("htpasswd", "realm", "service", "issuer", "token_ttl", "key_dir", "trust", "open")


@dataclass(frozen=True)
class TrustedIssuerConfig:
    """One `[[auth.trust]]` table: another token service whose JWTs regd accepts. Its keys
    come from a PEM certificate bundle (`certificates`) or a JWKS file (`jwks`)."""

    issuer: str
    service: str
    certificates: Path | None = None
    jwks: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "service": self.service,
            "certificates": None if self.certificates is None else str(self.certificates),
            "jwks": None if self.jwks is None else str(self.jwks),
        }


def _trust(value: Any, where: str) -> tuple[TrustedIssuerConfig, ...]:
    out = []
    for i, entry in enumerate(_json_list(value, where, "auth.trust")):
        at = f"{where}: auth.trust[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table")
        unknown = set(entry) - {"issuer", "service", "certificates", "jwks"}
        if unknown:
            raise ConfigError(f"{at}: unknown key {sorted(unknown)[0]!r}")
        issuer, service = entry.get("issuer"), entry.get("service")
        if not isinstance(issuer, str) or not issuer or not isinstance(service, str) or not service:
            raise ConfigError(f"{at} needs issuer and service strings")
        certs, jwks = entry.get("certificates"), entry.get("jwks")
        if (certs is None) == (jwks is None):
            raise ConfigError(f"{at} needs exactly one of certificates (a PEM bundle) or jwks")
        for name, path in (("certificates", certs), ("jwks", jwks)):
            if path is not None and not isinstance(path, str):
                raise ConfigError(f"{at}.{name} must be a file path")
        out.append(
            TrustedIssuerConfig(
                issuer,
                service,
                None if certs is None else Path(certs).expanduser(),
                None if jwks is None else Path(jwks).expanduser(),
            )
        )
    return tuple(out)


def _access(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    from regd.auth.policy import Policy

    rules = _json_list(value, where, "access")
    try:
        Policy.parse(rules)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return tuple(dict(rule) for rule in rules)
