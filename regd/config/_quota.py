"""quotas: the `[[quota]]` tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from regd.config._parsing import _json_list, parse_size
from regd.errors import ConfigError


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
