"""Loading the settings (defaults, the file, the environment, the flags) and checking them."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from regd.config._auth import AUTH_KEYS, _access, _trust
from regd.config._config import Config
from regd.config._events import _event_endpoints, _flatten_events
from regd.config._mirror import _mirrors
from regd.config._parsing import parse_duration
from regd.config._quota import _quota
from regd.config._retention import _retention
from regd.config._s3 import S3_KEYS, _validate_s3
from regd.config._workers import default_workers, usable_cpus
from regd.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
STORAGE_DRIVERS = ("filesystem", "memory", "s3")
LOG_FORMATS = ("text", "json")


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("REGD_DATA_DIR"):
        return Path(env["REGD_DATA_DIR"])
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "regd"


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
        "event_poll_interval",
        "s3_redirect_expiry",
        "quota_refresh",
        "maintenance_refresh",
        "ready_timeout",
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
        "event_batch",
        "s3_chunk_size",
        "s3_copy_threshold",
        "s3_max_connections",
    }
)
_BOOLS = frozenset(
    {
        "access_log",
        "gc_delete_untagged",
        "auth_open",
        "ui",
        "event_pulls",
        "event_fills",
        "s3_path_style",
        "s3_redirect",
        "metrics",
    }
)


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
        elif key == "event_endpoints":
            result = _event_endpoints(value, source)
        elif key == "mirror":
            result = _mirrors(value, source)
        elif key == "quota":
            result = _quota(value, source)
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
            "s3_ca_bundle",
        ):
            result = Path(str(value)).expanduser()
        else:
            result = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: invalid value {value!r} for {key}") from None
    return result


def _flatten(doc: dict[str, Any], path: Path, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The `[name]` table's keys as the flat `name_*` settings."""
    table = doc.get(name)
    if table is None:
        return doc
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {name} must be a table ([{name}])")
    out = {k: v for k, v in doc.items() if k != name}
    for key, value in table.items():
        if key.replace("-", "_") not in keys:
            raise ConfigError(
                f"{path}: unknown setting {name}.{key} (expected one of {', '.join(keys)})"
            )
        out[f"{name}_" + key.replace("-", "_")] = value
    return out


def _flatten_tables(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """The `[auth]` and `[s3]` tables' keys as the flat `auth_*` and `s3_*` settings."""
    return _flatten(_flatten(doc, path, "auth", AUTH_KEYS), path, "s3", S3_KEYS)


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
        for key, value in _flatten_events(_flatten_tables(doc, path), path).items():
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

    if "workers" not in values:
        values["workers"] = default_workers(values.get("storage", "filesystem"), usable_cpus())
    config = Config(**values)
    validate(config)
    return config


def _check_address(name: str, addr: str) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not port:
        raise ConfigError(f"{name} must be HOST:PORT or :PORT, not {addr!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} {addr!r} has an invalid port {port!r} (0 to 65535)")
    if host.startswith("[") != host.endswith("]") or any(c.isspace() for c in host):
        raise ConfigError(f"{name} {addr!r} has an invalid host {host!r}")


def validate(config: Config) -> None:
    _check_address("addr", config.addr)
    if config.metrics_addr is not None:
        _check_address("metrics_addr", config.metrics_addr)
        if not config.metrics:
            raise ConfigError("metrics_addr needs metrics = true")
        # The application tells the two listeners apart by the port a request came to.
        if config.metrics_port in (0, config.port):
            raise ConfigError(
                f"metrics_addr {config.metrics_addr!r} needs a port of its own, not 0 or addr's"
            )
    if config.workers < 1 or config.workers > 64:
        raise ConfigError(f"workers must be between 1 and 64, not {config.workers}")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
    if config.storage not in STORAGE_DRIVERS:
        raise ConfigError(f"storage must be one of {', '.join(STORAGE_DRIVERS)}")
    if config.storage == "s3":
        _validate_s3(config)
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
        "ready_timeout",
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
    if config.event_poll_interval <= 0 or config.event_poll_interval > 60:
        raise ConfigError("event_poll_interval must be more than 0 and at most 60 seconds")
    if not 1 <= config.event_batch <= 1000:
        raise ConfigError("event_batch must be between 1 and 1000")
