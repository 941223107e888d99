"""events (regd.events): `[[events.endpoint]]` or `[[notifications.endpoints]]`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regd.config._parsing import _json_list, parse_duration
from regd.errors import ConfigError

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
