"""mirrors (regd.mirror): the `[[mirror]]` tables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regd.config._parsing import _json_list, parse_duration, parse_size
from regd.errors import ConfigError

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
