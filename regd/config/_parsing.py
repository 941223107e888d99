"""Parsing the settings tables share: durations, sizes, lists of tables."""

from __future__ import annotations

import json
import re
from typing import Any

from regd.durations import duration_seconds
from regd.errors import ConfigError


def parse_duration(value: Any, where: str) -> float:
    try:
        return duration_seconds(value)
    except ValueError:
        raise ConfigError(
            f"{where}: invalid duration {value!r} (e.g. 3600, 90s, 12h, 30d)"
        ) from None


def _json_list(value: Any, where: str, what: str) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: {what} must be a JSON list: {exc}") from None
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: {what} must be a list of tables")
    return list(value)


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
