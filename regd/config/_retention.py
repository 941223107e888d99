"""The `[[retention]]` rules: which tags the retention policy prunes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from regd.config._parsing import parse_duration
from regd.errors import ConfigError


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
