"""The one frozen object that holds every setting."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from regd.config._auth import TrustedIssuerConfig
from regd.config._events import EventEndpoint
from regd.config._mirror import MirrorConfig
from regd.config._quota import QuotaRule
from regd.config._retention import RetentionRule
from regd.config._s3 import _MiB


@dataclass(frozen=True)
class Config:
    addr: str = "127.0.0.1:5000"
    data_dir: Path = Path("~/.local/share/regd")
    database: str | None = None
    # load() puts default_workers() here when no setting names it; a Config made in code
    # (the tests' in-process apps) is one process.
    workers: int = 1
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = True
    # Prometheus metrics at /metrics, on `addr` or on a listener of their own.
    metrics: bool = True
    metrics_addr: str | None = None
    # How long /readyz waits for each of the database and the storage.
    ready_timeout: float = 2.0
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
    # The web UI at /ui/ (regd.ui).
    ui: bool = True
    # events (regd.events)
    event_endpoints: tuple[EventEndpoint, ...] = ()
    event_pulls: bool = False
    event_fills: bool = False
    event_poll_interval: float = 1.0
    event_batch: int = 100
    # s3 (the `[s3]` table; used when storage = "s3")
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_region: str | None = None
    s3_endpoint_url: str | None = None
    s3_path_style: bool = False
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_encryption: str | None = None
    s3_storage_class: str | None = None
    s3_ca_bundle: Path | None = None
    s3_redirect: bool = False
    s3_redirect_expiry: float = 1200.0
    s3_chunk_size: int = 10 * _MiB
    s3_copy_threshold: int = 5 * 1024 * _MiB
    s3_max_connections: int = 32
    # pull-through caches (the `[[mirror]]` tables; regd.mirror)
    mirror: tuple[MirrorConfig, ...] = ()
    # Quotas and maintenance mode (see the README's "Running in production").
    quota: tuple[QuotaRule, ...] = ()
    quota_refresh: float = 5.0
    maintenance_refresh: float = 2.0

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
    def metrics_bind(self) -> str | None:
        if self.metrics_addr is None:
            return None
        host, _, port = self.metrics_addr.rpartition(":")
        return f"0.0.0.0:{port}" if host == "" else self.metrics_addr

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_addr is None else int(self.metrics_addr.rsplit(":", 1)[1])

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
            elif f.name == "event_endpoints":
                out["REGD_EVENT_ENDPOINTS"] = json.dumps([e.to_json() for e in value])
            elif f.name == "mirror":
                out["REGD_MIRROR"] = json.dumps([entry.to_json() for entry in value])
            elif f.name == "quota":
                out["REGD_QUOTA"] = json.dumps([rule.to_json() for rule in value])
            elif value is not None:
                out[f"REGD_{f.name.upper()}"] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        return out
