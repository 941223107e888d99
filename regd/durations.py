"""Durations as people write them (`90s`, `15m`, `12h`, `30d`, `2w`): shared by regd's
configuration and regctl's flags, so it depends on nothing but the standard library."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(value: Any) -> float:
    """Seconds from a number or a string such as `90s`, `15m`, `12h`, `30d`, `2w`.

    Raises ValueError for anything else (negative numbers included)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.match(str(value).strip().lower())
    if not match:
        raise ValueError(f"invalid duration {value!r}")
    return float(match[1]) * _UNITS[match[2]]
