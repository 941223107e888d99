"""Repository names and tags, by the distribution spec's grammar."""

from __future__ import annotations

import re

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# The spec counts 255 characters including the registry host; without knowing the host
# a client used, the name alone is held to that bound.
MAX_REPOSITORY_LENGTH = 255


class NameError_(ValueError):
    """A repository name or tag does not follow the spec's grammar."""


def is_valid_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY_LENGTH and _REPOSITORY.match(name) is not None


def is_valid_tag(tag: str) -> bool:
    return _TAG.match(tag) is not None


def check_repository(name: str) -> str:
    if not is_valid_repository(name):
        raise NameError_(
            f"invalid repository name {name[:100]!r}: lowercase path components of "
            "[a-z0-9] joined by '.', '_', '__' or dashes, separated by '/', at most "
            f"{MAX_REPOSITORY_LENGTH} characters"
        )
    return name


def check_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise NameError_(
            f"invalid tag {tag[:140]!r}: [a-zA-Z0-9_] then up to 127 of [a-zA-Z0-9._-]"
        )
    return tag
