"""Configuration: one frozen object, from a TOML file, `REGD_*` variables and flags.

Precedence, lowest to highest: built-in defaults, the file, the environment, the flags.
"""

from __future__ import annotations

import json
import math
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
STORAGE_DRIVERS = ("filesystem", "memory", "s3")
LOG_FORMATS = ("text", "json")


# The most workers the default gives, however many CPUs there are. Every worker takes its
# turn at the one database writer (SQLite's lock, or PostgreSQL's row locks on the same
# tags), keeps its own caches and connection pool (about 70 MiB resident each) and runs its
# own housekeeping; past eight, a request rate that more processes could still raise is
# rarer than the memory and the write contention they certainly add. More is a choice.
WORKERS_CAP = 8
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_limit(root: Path) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, None when there is none.

    cgroup v2 writes `QUOTA PERIOD` (or `max PERIOD`) in cpu.max; v1 splits them over
    cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us."""
    for quota_file, period_file in (
        (root / "cpu.max", None),
        (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),
    ):
        try:
            text = quota_file.read_text().split()
            if period_file is not None:
                text += period_file.read_text().split()
        except OSError:
            continue
        try:
            quota, period = float(text[0]), float(text[1])
        except (IndexError, ValueError):
            # "max", or a file we cannot read sense from: no limit that we know of.
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (its affinity mask), fewer when a cgroup quota
    allows less time than that: a container given 1.5 CPUs on a 64-core host gets 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def default_workers(storage: str, cpus: int) -> int:
    """`workers` when no setting names it: one per usable CPU up to WORKERS_CAP; one for
    the memory driver, whose blobs live in one process."""
    if storage == "memory":
        return 1
    return max(1, min(cpus, WORKERS_CAP))


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


# -- events (regd.events): `[[events.endpoint]]` or `[[notifications.endpoints]]` ----------
EVENT_ACTIONS = ("push", "pull", "mount", "delete", "fill")
_ENDPOINT_KEYS = frozenset(
    {
        "name",
        "url",
        "headers",
        "timeout",
        "threshold",
        "backoff",
        "ignoredmediatypes",
        "ignore",
        "repositories",
        "secret",
        "pulls",
        "fills",
        "disabled",
    }
)
# The `[events]` table's own keys, as the flat event_* settings.
EVENT_KEYS = ("endpoint", "pulls", "fills", "poll_interval", "batch")


@dataclass(frozen=True)
class EventEndpoint:
    """One webhook, configured as Distribution configures its notification endpoints,
    plus a repository filter (a regular expression matched against the whole name), a
    shared `secret` that signs every delivery, and whether it hears of pulls and of mirror
    cache fills (None: the global `event_pulls`, `event_fills`)."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 1.0
    threshold: int = 10
    backoff: float = 1.0
    ignored_media_types: tuple[str, ...] = ()
    ignored_actions: tuple[str, ...] = ()
    repositories: str | None = None
    secret: str | None = None
    pulls: bool | None = None
    fills: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "headers": {k: [v for n, v in self.headers if n == k] for k, _ in self.headers},
            "timeout": self.timeout,
            "threshold": self.threshold,
            "backoff": self.backoff,
            "ignore": {
                "mediatypes": list(self.ignored_media_types),
                "actions": list(self.ignored_actions),
            },
            "repositories": self.repositories,
            "secret": self.secret,
            "pulls": self.pulls,
            "fills": self.fills,
        }


def _endpoint_duration(value: Any, where: str) -> float:
    # Distribution's files say "500ms"; regd's durations know no milliseconds.
    if isinstance(value, str) and value.strip().lower().endswith("ms"):
        try:
            millis = float(value.strip()[:-2])
        except ValueError:
            millis = -1.0
        if millis < 0:
            raise ConfigError(f"{where}: invalid duration {value!r}")
        return millis / 1000
    return parse_duration(value, where)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings")
    return tuple(value)


def _endpoint(entry: Any, at: str) -> EventEndpoint | None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{at} must be a table")
    unknown = set(entry) - _ENDPOINT_KEYS
    if unknown:
        raise ConfigError(f"{at}: unknown key {sorted(unknown)[0]!r}")
    name, url = entry.get("name"), entry.get("url")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
        raise ConfigError(f"{at}.name must be 1 to 100 letters, digits, '.', '_' or '-'")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{at}.url must be an http:// or https:// URL")
    headers: list[tuple[str, str]] = []
    raw_headers = entry.get("headers", {})
    if not isinstance(raw_headers, dict):
        raise ConfigError(f"{at}.headers must be a table of header names to values")
    for key, value in raw_headers.items():
        values = [value] if isinstance(value, str) else value
        headers += [(key, v) for v in _strings(values, f"{at}.headers.{key}")]
    ignore = entry.get("ignore", {})
    if not isinstance(ignore, dict) or set(ignore) - {"mediatypes", "actions"}:
        raise ConfigError(f"{at}.ignore must be a table of mediatypes and actions")
    media_types = _strings(entry.get("ignoredmediatypes", []), f"{at}.ignoredmediatypes")
    media_types += _strings(ignore.get("mediatypes", []), f"{at}.ignore.mediatypes")
    actions = _strings(ignore.get("actions", []), f"{at}.ignore.actions")
    for action in actions:
        if action not in EVENT_ACTIONS:
            raise ConfigError(f"{at}.ignore.actions: {action!r} is not one of {EVENT_ACTIONS}")
    pattern = entry.get("repositories")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise ConfigError(f"{at}.repositories must be a regular expression string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"{at}.repositories is not a valid regular expression: {exc}"
            ) from None
    threshold = entry.get("threshold", 10)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ConfigError(f"{at}.threshold must be a positive integer")
    timeout = _endpoint_duration(entry.get("timeout", 1.0), f"{at}.timeout")
    backoff = _endpoint_duration(entry.get("backoff", 1.0), f"{at}.backoff")
    if timeout <= 0 or timeout > 300:
        raise ConfigError(f"{at}.timeout must be more than 0 and at most 300 seconds")
    if backoff <= 0:
        raise ConfigError(f"{at}.backoff must be more than 0 seconds")
    secret = entry.get("secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        raise ConfigError(f"{at}.secret must be a string of at least 16 characters")
    for key in ("pulls", "fills", "disabled"):
        if entry.get(key) is not None and not isinstance(entry[key], bool):
            raise ConfigError(f"{at}.{key} must be true or false")
    if entry.get("disabled", False):
        return None
    return EventEndpoint(
        name=name,
        url=url,
        headers=tuple(headers),
        timeout=timeout,
        threshold=threshold,
        backoff=backoff,
        ignored_media_types=media_types,
        ignored_actions=actions,
        repositories=pattern,
        secret=secret,
        pulls=entry.get("pulls"),
        fills=entry.get("fills"),
    )


def _event_endpoints(value: Any, where: str) -> tuple[EventEndpoint, ...]:
    out: list[EventEndpoint] = []
    for i, entry in enumerate(_json_list(value, where, "events.endpoint")):
        endpoint = _endpoint(entry, f"{where}: events.endpoint[{i}]")
        if endpoint is None:
            continue
        if any(e.name == endpoint.name for e in out):
            raise ConfigError(f"{where}: two event endpoints are named {endpoint.name!r}")
        out.append(endpoint)
    return tuple(out)


def _flatten_events(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """`[[events.endpoint]]` (and its `[events]` table's other keys) and Distribution's
    `[[notifications.endpoints]]` as the flat `event_*` settings."""
    out = {k: v for k, v in doc.items() if k not in ("events", "notifications")}
    endpoints: list[Any] = []
    notifications = doc.get("notifications")
    if notifications is not None:
        if not isinstance(notifications, dict) or set(notifications) - {"endpoints"}:
            raise ConfigError(f"{path}: notifications must be a table holding only endpoints")
        endpoints += _json_list(notifications.get("endpoints", []), str(path), "endpoints")
    table = doc.get("events")
    if table is not None:
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: events must be a table ([events])")
        for key, value in table.items():
            if key not in EVENT_KEYS:
                expected = ", ".join(EVENT_KEYS)
                raise ConfigError(
                    f"{path}: unknown setting events.{key} (expected one of {expected})"
                )
            if key == "endpoint":
                endpoints += _json_list(value, str(path), "events.endpoint")
            else:
                out[f"event_{key}"] = value
    if endpoints:
        out["event_endpoints"] = endpoints
    return out


# -- mirrors (regd.mirror): the `[[mirror]]` tables ------------------------------------
MIRROR_KEYS = (
    "prefix",
    "upstream",
    "default",
    "username",
    "password",
    "ca_cert",
    "manifest_ttl",
    "max_size",
    "timeout",
)


@dataclass(frozen=True)
class MirrorConfig:
    """One `[[mirror]]` table: repositories named `prefix/...` are a pull-through cache of
    `upstream`; with `default`, so are misses in repositories outside every prefix."""

    prefix: str
    upstream: str
    default: bool = False
    username: str | None = None
    password: str | None = None
    ca_cert: Path | None = None
    manifest_ttl: float = 300.0
    # Bytes of cached content above which the least recently pulled goes; 0: no limit.
    max_size: int = 0
    timeout: float = 60.0

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "upstream": self.upstream,
            "default": self.default,
            "username": self.username,
            "password": self.password,
            "ca_cert": None if self.ca_cert is None else str(self.ca_cert),
            "manifest_ttl": self.manifest_ttl,
            "max_size": self.max_size,
            "timeout": self.timeout,
        }


def _mirrors(value: Any, where: str) -> tuple[MirrorConfig, ...]:
    from regd.oci.names import is_valid_repository

    out: list[MirrorConfig] = []
    for i, entry in enumerate(_json_list(value, where, "mirror")):
        at = f"{where}: mirror[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table")
        entry = {str(k).replace("-", "_"): v for k, v in entry.items()}
        unknown = set(entry) - set(MIRROR_KEYS)
        if unknown:
            expected = ", ".join(MIRROR_KEYS)
            raise ConfigError(
                f"{at}: unknown key {sorted(unknown)[0]!r} (expected one of {expected})"
            )
        prefix, upstream = entry.get("prefix"), entry.get("upstream")
        if not isinstance(prefix, str) or not is_valid_repository(prefix):
            raise ConfigError(
                f"{at}.prefix must be a repository path such as docker.io or ghcr.io/org"
            )
        if not isinstance(upstream, str) or not re.match(r"^https?://[^/\s]+/?$", upstream):
            raise ConfigError(
                f"{at}.upstream must be a registry's base URL such as https://ghcr.io, "
                f"not {str(upstream)[:100]!r}"
            )
        default = entry.get("default", False)
        if not isinstance(default, bool):
            raise ConfigError(f"{at}.default must be true or false")
        username, password = entry.get("username"), entry.get("password")
        for name, text in (("username", username), ("password", password)):
            if text is not None and not isinstance(text, str):
                raise ConfigError(f"{at}.{name} must be a string")
        if (username is None) != (password is None):
            raise ConfigError(f"{at}: username and password must be given together")
        ca_cert = entry.get("ca_cert")
        if ca_cert is not None and not isinstance(ca_cert, str):
            raise ConfigError(f"{at}.ca_cert must be a file path")
        if ca_cert is not None and not Path(ca_cert).expanduser().is_file():
            raise ConfigError(f"{at}.ca_cert: {ca_cert} is not a readable file")
        ttl = parse_duration(entry.get("manifest_ttl", 300), f"{at}.manifest_ttl")
        timeout = parse_duration(entry.get("timeout", 60), f"{at}.timeout")
        if timeout <= 0:
            raise ConfigError(f"{at}.timeout must be more than 0 seconds")
        out.append(
            MirrorConfig(
                prefix=prefix,
                upstream=upstream.rstrip("/"),
                default=default,
                username=username,
                password=password,
                ca_cert=None if ca_cert is None else Path(ca_cert).expanduser(),
                manifest_ttl=ttl,
                max_size=parse_size(entry.get("max_size", 0), f"{at}.max_size"),
                timeout=timeout,
            )
        )
    prefixes = [m.prefix for m in out]
    for m in out:
        for other in prefixes:
            if other != m.prefix and other.startswith(m.prefix + "/"):
                raise ConfigError(f"{where}: mirror prefixes {m.prefix} and {other} overlap")
    if len(set(prefixes)) != len(prefixes):
        raise ConfigError(f"{where}: two mirrors share a prefix")
    if sum(m.default for m in out) > 1:
        raise ConfigError(f"{where}: only one mirror may be the default")
    return tuple(out)


# -- end mirrors -------------------------------------------------------------------------


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

# -- s3 (regd.storage.s3): the `[s3]` table ------------------------------------------------
# A table of its own rather than `[storage.s3]`: `storage` is already the driver's name.
S3_KEYS = (
    "bucket",
    "prefix",
    "region",
    "endpoint_url",
    "path_style",
    "access_key",
    "secret_key",
    "encryption",
    "storage_class",
    "ca_bundle",
    "redirect",
    "redirect_expiry",
    "chunk_size",
    "copy_threshold",
    "max_connections",
)
S3_ENCRYPTIONS = ("AES256", "aws:kms")
_MiB = 1024 * 1024
# -- end s3 ------------------------------------------------------------------------------


# -- quotas: the `[[quota]]` tables ------------------------------------------------------
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5}


def parse_size(value: Any, where: str) -> int:
    """Bytes from an integer or a string such as `500MB` or `50GiB` (`Ki`: 1024, `K`: 1000)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None:
            raise ConfigError(f"{where}: invalid size {value!r} (e.g. 1073741824, 500MB, 50GiB)")
        unit = (match[2] or "").upper().rstrip("B")
        factor = 1024 ** " KMGTP".index(unit[0]) if unit.endswith("I") else _UNITS[unit]
        size = int(float(match[1]) * factor)
    if size < 0:
        raise ConfigError(f"{where}: a size cannot be negative")
    return size


@dataclass(frozen=True)
class QuotaRule:
    """One `[[quota]]` table: repositories matching `repositories` (the access policy's glob
    syntax, regd.auth.policy.Pattern) may hold at most `limit` bytes together."""

    repositories: str
    limit: int

    def to_json(self) -> dict[str, Any]:
        return {"repositories": self.repositories, "limit": self.limit}


def _quota(value: Any, where: str) -> tuple[QuotaRule, ...]:
    from regd.auth.policy import Pattern

    out: list[QuotaRule] = []
    for i, entry in enumerate(_json_list(value, where, "quota")):
        at = f"{where}: quota[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a table with repositories and limit")
        unknown = set(entry) - {"repositories", "limit"}
        if unknown:
            raise ConfigError(f"{at}: unknown key {sorted(unknown)[0]!r} (repositories, limit)")
        pattern, limit = entry.get("repositories"), entry.get("limit")
        if not isinstance(pattern, str) or limit is None:
            raise ConfigError(f"{at} needs repositories (a pattern string) and limit")
        if "{user}" in pattern:
            raise ConfigError(f"{at}: {{user}} has no meaning in a quota pattern")
        try:
            Pattern(pattern)
        except ValueError as exc:
            raise ConfigError(f"{at}: {exc}") from None
        if any(rule.repositories == pattern for rule in out):
            raise ConfigError(f"{at}: a second quota for {pattern!r}")
        size = parse_size(limit, f"{at}.limit")
        if size < 1:
            raise ConfigError(f"{at}.limit: a quota limit must be at least 1 byte")
        out.append(QuotaRule(pattern, size))
    return tuple(out)


# -- end quotas ----------------------------------------------------------------------------


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


def _validate_s3(config: Config) -> None:
    if not config.s3_bucket:
        raise ConfigError('storage = "s3" needs s3.bucket (REGD_S3_BUCKET)')
    if (config.s3_access_key is None) != (config.s3_secret_key is None):
        raise ConfigError("s3.access_key and s3.secret_key must be given together")
    if config.s3_encryption is not None and config.s3_encryption not in S3_ENCRYPTIONS:
        raise ConfigError(f"s3.encryption must be one of {', '.join(S3_ENCRYPTIONS)}")
    if not 5 * _MiB <= config.s3_chunk_size <= 5 * 1024 * _MiB:
        raise ConfigError("s3.chunk_size must be between 5 MiB and 5 GiB (S3's part sizes)")
    if not 0 < config.s3_copy_threshold <= 5 * 1024 * _MiB:
        raise ConfigError("s3.copy_threshold must be more than 0 and at most 5 GiB")
    if not 1 <= config.s3_max_connections <= 1024:
        raise ConfigError("s3.max_connections must be between 1 and 1024")
    if not 1 <= config.s3_redirect_expiry <= 7 * 86400:
        raise ConfigError("s3.redirect_expiry must be between 1 second and 7 days")
    if config.s3_endpoint_url is not None and not config.s3_endpoint_url.startswith(
        ("http://", "https://")
    ):
        raise ConfigError(f"s3.endpoint_url must be an http(s) URL, not {config.s3_endpoint_url!r}")
