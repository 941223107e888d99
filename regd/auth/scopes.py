"""Resource scopes as Docker's token specification writes them: `type[(class)]:name:actions`.

A name never contains ':', so the last ':' starts the actions. Repository names must follow
the distribution grammar (regd.oci.names), which already refuses `..`, `//`, uppercase and
every other path trick; `registry:catalog:*` and `registry:admin:*` name the registry-wide
rights.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regd.auth.errors import InvalidScope
from regd.oci.names import is_valid_repository

PULL = "pull"
PUSH = "push"
DELETE = "delete"
CATALOG = "catalog"
ADMIN = "admin"
REPOSITORY_ACTIONS = frozenset({PULL, PUSH, DELETE})
REGISTRY_RIGHTS = frozenset({CATALOG, ADMIN})

# A token request asks for one or two scopes (a mount: two); far more is an attack or a bug,
# and is refused rather than trimmed so that the client learns why its token carries less.
MAX_SCOPES = 64
MAX_SCOPE_LENGTH = 512

_TYPE = re.compile(r"^([a-z0-9]+)(?:\(([a-z0-9]+)\))?$")
_ACTION = re.compile(r"^(\*|[a-z]+)$")


@dataclass(frozen=True, slots=True)
class Scope:
    """One asked-for or granted resource: `actions` may contain '*', meaning all."""

    type: str
    name: str
    actions: frozenset[str]
    resource_class: str | None = None

    def __str__(self) -> str:
        kind = self.type if self.resource_class is None else f"{self.type}({self.resource_class})"
        return f"{kind}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, Any]:
        """The JWT `access` entry."""
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scope(text: str) -> Scope:
    """One scope string; InvalidScope (one line) if it is malformed."""
    shown = text[:100]
    if len(text) > MAX_SCOPE_LENGTH:
        raise InvalidScope(f"scope {shown!r}... is longer than {MAX_SCOPE_LENGTH} characters")
    head, sep, actions_text = text.rpartition(":")
    kind, sep2, name = head.partition(":")
    if not sep or not sep2 or not name:
        raise InvalidScope(f"invalid scope {shown!r}: expected type:name:actions")
    match = _TYPE.match(kind)
    if match is None:
        raise InvalidScope(f"invalid scope {shown!r}: bad resource type {kind[:40]!r}")
    actions = frozenset(a for a in actions_text.split(",") if a)
    if not actions or not all(_ACTION.match(a) for a in actions):
        raise InvalidScope(f"invalid scope {shown!r}: bad actions {actions_text[:40]!r}")
    rtype, rclass = match.group(1), match.group(2)
    if rtype == "repository" and not is_valid_repository(name):
        raise InvalidScope(
            f"invalid scope {shown!r}: {name[:100]!r} is not a valid repository name"
        )
    if rtype == "registry" and name not in (CATALOG, ADMIN):
        raise InvalidScope(f"invalid scope {shown!r}: registry scopes are catalog and admin")
    return Scope(rtype, name, actions, rclass)


def parse_scopes(texts: Iterable[str]) -> list[Scope]:
    """Every scope of a token request. Each parameter may itself hold several scopes
    separated by spaces (the OAuth2 form always does). Equal resources are merged."""
    words: list[str] = []
    for text in texts:
        for word in text.split():
            words.append(word)
            if len(words) > MAX_SCOPES:
                raise InvalidScope(f"a token request may ask for at most {MAX_SCOPES} scopes")
    merged: dict[tuple[str, str, str | None], set[str]] = {}
    for word in words:
        scope = parse_scope(word)
        merged.setdefault((scope.type, scope.name, scope.resource_class), set()).update(
            scope.actions
        )
    return [Scope(t, n, frozenset(a), c) for (t, n, c), a in merged.items()]


def access_from_claim(claim: Any) -> list[Scope]:
    """The `access` claim of a verified token, leniently: entries that are not well-formed
    grant nothing (another issuer's token may carry types regd does not know)."""
    if not isinstance(claim, Sequence) or isinstance(claim, str):
        return []
    grants: list[Scope] = []
    for entry in claim:
        if not isinstance(entry, Mapping):
            continue
        rtype, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if not isinstance(rtype, str) or not isinstance(name, str):
            continue
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            continue
        grants.append(Scope(rtype, name, frozenset(actions)))
    return grants


def granted(grants: Iterable[Scope], rtype: str, name: str) -> frozenset[str]:
    """The actions `grants` allow on one resource ('*' expanded for repositories)."""
    actions: set[str] = set()
    for scope in grants:
        if scope.type == rtype and scope.name == name:
            actions |= scope.actions
    if "*" in actions:
        actions |= REPOSITORY_ACTIONS if rtype == "repository" else {"*"}
    return frozenset(actions)
