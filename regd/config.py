"""Configuration: one frozen object, from a TOML file, `REGD_*` variables and flags.

Precedence, lowest to highest: built-in defaults, the file, the environment, the flags.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from regd.durations import duration_seconds
from regd.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
STORAGE_DRIVERS = ("filesystem", "memory")


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("REGD_DATA_DIR"):
        return Path(env["REGD_DATA_DIR"])
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "regd"


def parse_duration(value: Any, where: str) -> float:
    try:
        return duration_seconds(value)
    except ValueError:
        raise ConfigError(
            f"{where}: invalid duration {value!r} (e.g. 3600, 90s, 12h, 30d)"
        ) from None


@dataclass(frozen=True)
class RetentionRule:
    """Tags of repositories whose name matches `repositories` (a regular expression,
    matched whole) are pruned by the policy."""

    repositories: str
    keep_last: int | None = None
    keep: str | None = None
    older_than: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "repositories": self.repositories,
            "keep_last": self.keep_last,
            "keep": self.keep,
            "older_than": self.older_than,
        }


def _retention(value: Any, where: str) -> tuple[RetentionRule, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: retention must be a JSON list: {exc}") from None
    if not isinstance(value, list):
        raise ConfigError(f"{where}: retention must be a list of tables")
    rules = []
    for i, entry in enumerate(value):
        at = f"{where}: retention[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table")
        unknown = set(entry) - {"repositories", "keep_last", "keep", "older_than"}
        if unknown:
            raise ConfigError(f"{at}: unknown keys {sorted(unknown)}")
        pattern = entry.get("repositories")
        if not isinstance(pattern, str):
            raise ConfigError(f"{at}.repositories must be a regular expression string")
        keep = entry.get("keep")
        for text, key in ((pattern, "repositories"), (keep, "keep")):
            if text is None:
                continue
            if not isinstance(text, str):
                raise ConfigError(f"{at}.{key} must be a string")
            try:
                re.compile(text)
            except re.error as exc:
                raise ConfigError(f"{at}.{key} is not a valid regular expression: {exc}") from None
        keep_last = entry.get("keep_last")
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
        ):
            raise ConfigError(f"{at}.keep_last must be a non-negative integer")
        older = entry.get("older_than")
        older_than = parse_duration(older, f"{at}.older_than") if older is not None else None
        if keep_last is None and keep is None and older_than is None:
            raise ConfigError(f"{at} needs keep_last, keep or older_than")
        rules.append(RetentionRule(pattern, keep_last, keep, older_than))
    return tuple(rules)


# -- auth (regd.auth wiring): the `[auth]` table and `[[access]]` rules -------------------
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


def _json_list(value: Any, where: str, what: str) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: {what} must be a JSON list: {exc}") from None
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: {what} must be a list of tables")
    return list(value)


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


# -- end auth ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    addr: str = "127.0.0.1:5000"
    data_dir: Path = Path("~/.local/share/regd")
    database: str | None = None
    workers: int = 1
    log_level: str = "info"
    access_log: bool = True
    storage: str = "filesystem"
    storage_root: Path | None = None
    graceful_timeout: float = 30.0
    database_write_timeout: float = 30.0
    admin_token: str | None = None
    gc_interval: float = 0.0
    gc_grace: float = 3600.0
    gc_delete_untagged: bool = False
    upload_max_age: float = 24 * 3600.0
    max_uploads_per_repository: int = 1000
    upload_purge_interval: float = 3600.0
    retention: tuple[RetentionRule, ...] = ()
    retention_interval: float = 3600.0
    # Limits a client can run into; see the README's "Limits and timeouts".
    max_connections: int = 4096
    max_connections_per_client: int = 512
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    min_body_rate: int = 1024
    send_timeout: float = 60.0
    keep_alive_timeout: float = 30.0
    max_header_size: int = 16 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_client_auth: str = "require"
    # auth (the `[auth]` table; regd.auth.wiring says what turns authentication on)
    auth_htpasswd: Path | None = None
    auth_realm: str | None = None
    auth_service: str = "regd"
    auth_issuer: str = "regd"
    auth_token_ttl: float = 300.0
    auth_key_dir: Path | None = None
    auth_trust: tuple[TrustedIssuerConfig, ...] = ()
    auth_open: bool = False
    access: tuple[dict[str, Any], ...] = ()

    @property
    def auth_keys_dir(self) -> Path:
        return self.auth_key_dir or self.data_dir / "auth"

    @property
    def auth_configured(self) -> bool:
        """Whether the configuration alone turns authentication on (accounts stored in the
        database turn it on too; see regd.auth.wiring.auth_enabled)."""
        return bool(self.auth_htpasswd or self.auth_trust or self.access)

    @property
    def bind(self) -> str:
        """The address to listen on; `:PORT` (an empty host) means every IPv4 interface."""
        host, _, port = self.addr.rpartition(":")
        return f"0.0.0.0:{port}" if host == "" else self.addr

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def database_url(self) -> str:
        if self.database:
            return self.database
        return f"sqlite:///{self.data_dir / 'regd.db'}"

    @property
    def blob_root(self) -> Path:
        return self.storage_root or self.data_dir

    def to_env(self) -> dict[str, str]:
        """The environment that recreates this configuration in a worker process."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "retention":
                out["REGD_RETENTION"] = json.dumps([rule.to_json() for rule in value])
            elif f.name == "auth_trust":
                out["REGD_AUTH_TRUST"] = json.dumps([entry.to_json() for entry in value])
            elif f.name == "access":
                out["REGD_ACCESS"] = json.dumps(list(value))
            elif value is not None:
                out[f"REGD_{f.name.upper()}"] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        return out


_FLOATS = frozenset(
    {
        "graceful_timeout",
        "database_write_timeout",
        "gc_interval",
        "gc_grace",
        "upload_max_age",
        "upload_purge_interval",
        "retention_interval",
        "header_timeout",
        "body_timeout",
        "send_timeout",
        "keep_alive_timeout",
        "auth_token_ttl",
    }
)
_INTS = frozenset(
    {
        "workers",
        "max_uploads_per_repository",
        "max_connections",
        "max_connections_per_client",
        "max_header_size",
        "min_body_rate",
    }
)
_BOOLS = frozenset({"access_log", "gc_delete_untagged", "auth_open"})


def _coerce(key: str, value: Any, source: str) -> Any:
    try:
        if key in _INTS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            result: Any = int(value)
        elif key in _FLOATS:
            result = parse_duration(value, source)
        elif key == "retention":
            result = _retention(value, source)
        elif key == "auth_trust":
            result = _trust(value, source)
        elif key == "access":
            result = _access(value, source)
        elif key in _BOOLS:
            if isinstance(value, bool):
                result = value
            elif str(value).lower() in ("1", "true", "yes", "on"):
                result = True
            elif str(value).lower() in ("0", "false", "no", "off"):
                result = False
            else:
                raise ValueError(value)
        elif key in (
            "data_dir",
            "storage_root",
            "tls_cert",
            "tls_key",
            "tls_client_ca",
            "auth_htpasswd",
            "auth_key_dir",
        ):
            result = Path(str(value)).expanduser()
        else:
            result = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: invalid value {value!r} for {key}") from None
    return result


def _flatten_auth(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """The `[auth]` table's keys as the flat `auth_*` settings."""
    table = doc.get("auth")
    if table is None:
        return doc
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: auth must be a table ([auth])")
    out = {k: v for k, v in doc.items() if k != "auth"}
    for key, value in table.items():
        if key.replace("-", "_") not in AUTH_KEYS:
            raise ConfigError(
                f"{path}: unknown setting auth.{key} (expected one of {', '.join(AUTH_KEYS)})"
            )
        out["auth_" + key.replace("-", "_")] = value
    return out


def load(
    *,
    file: Path | None = None,
    env: Mapping[str, str] = os.environ,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    known = {f.name for f in fields(Config)}
    values: dict[str, Any] = {"data_dir": default_data_dir(env)}

    path = file or (Path(env["REGD_CONFIG"]) if env.get("REGD_CONFIG") else None)
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in _flatten_auth(doc, path).items():
            key = key.replace("-", "_")
            if key not in known:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, value, str(path))

    for name in known:
        raw = env.get(f"REGD_{name.upper()}")
        if raw not in (None, ""):
            values[name] = _coerce(name, raw, f"REGD_{name.upper()}")

    for key, value in (flags or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")

    config = Config(**values)
    validate(config)
    return config


def validate(config: Config) -> None:
    host, sep, port = config.addr.rpartition(":")
    if not sep or not port:
        raise ConfigError(f"addr must be HOST:PORT or :PORT, not {config.addr!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"addr {config.addr!r} has an invalid port {port!r} (0 to 65535)")
    if host.startswith("[") != host.endswith("]") or any(c.isspace() for c in host):
        raise ConfigError(f"addr {config.addr!r} has an invalid host {host!r}")
    if config.workers < 1 or config.workers > 64:
        raise ConfigError(f"workers must be between 1 and 64, not {config.workers}")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if config.storage not in STORAGE_DRIVERS:
        raise ConfigError(f"storage must be one of {', '.join(STORAGE_DRIVERS)}")
    if config.storage == "memory" and config.workers > 1:
        raise ConfigError("the memory storage driver cannot be shared by several workers")
    if config.database and not config.database.startswith(
        ("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")
    ):
        raise ConfigError(
            f"database must be sqlite:///PATH or postgresql://..., not {config.database!r}"
        )
    for name in sorted(_FLOATS):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    for name in ("max_connections", "max_header_size", "max_uploads_per_repository"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if config.max_connections_per_client < 0:
        raise ConfigError("max_connections_per_client must not be negative (0: no cap)")
    if config.min_body_rate < 0:
        raise ConfigError("min_body_rate must not be negative (0: no minimum)")
    for name in (
        "header_timeout",
        "body_timeout",
        "send_timeout",
        "keep_alive_timeout",
        "database_write_timeout",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be more than 0 seconds")
    if config.auth_token_ttl < 10 or config.auth_token_ttl > 86400:
        raise ConfigError("auth.token_ttl must be between 10 seconds and 1 day")
    if config.auth_realm is not None and not config.auth_realm.startswith(("http://", "https://")):
        raise ConfigError(f"auth.realm must be an http(s) URL, not {config.auth_realm[:100]!r}")
    if config.admin_token is not None and len(config.admin_token) < 16:
        raise ConfigError("admin_token must be at least 16 characters")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls_cert and tls_key must be given together")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ConfigError("tls_client_ca needs tls_cert and tls_key")
    if config.tls_client_auth not in ("require", "optional"):
        raise ConfigError("tls_client_auth must be require or optional")
