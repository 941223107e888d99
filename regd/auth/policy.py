"""The access policy: rules from who to which repositories to which actions.

Each rule is one `[[access]]` table of the configuration file:

    [[access]]
    who = ["alice", "group:ci", "authenticated"]   # or one string
    repositories = ["team/**", "{user}/**"]
    actions = ["pull", "push"]                     # pull, push, delete, catalog, admin, "*"

Semantics:
- No rule, no access: a caller may do what at least one matching rule grants (rules add up).
- who: an account name; `group:NAME` for the members of a group; `authenticated` for every
  caller that logged in; `anonymous` for every caller, logged in or not (logging in never
  takes a right away, since clients send credentials whenever they have them).
- repositories: glob patterns over repository names. `*` matches within one path segment,
  `**` across segments, `{user}` is the caller's own account name (never matches for an
  anonymous caller). `team/**` does not match `team` itself.
- actions: `pull`, `push`, `delete` apply to the repositories of the rule; `catalog` (list
  repositories) and `admin` (the admin API) are registry-wide rights and need no
  repositories; `*` is all five.
A caller authenticated with a Bearer token may do exactly what the token's `access` claim
says (its issuer applied the policy); a machine token's scopes narrow its owner's rights.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regd.auth.identity import Identity
from regd.auth.scopes import ADMIN, CATALOG, REGISTRY_RIGHTS, REPOSITORY_ACTIONS, granted
from regd.errors import ConfigError

ALL_ACTIONS = REPOSITORY_ACTIONS | REGISTRY_RIGHTS
_PATTERN_CHARS = re.compile(r"^[a-z0-9._/*{}-]+$")
_WHO = re.compile(r"^(anonymous|authenticated|group:[A-Za-z0-9._-]+|[^\s:]+)$")


class Pattern:
    """A repository glob, compiled once."""

    def __init__(self, text: str) -> None:
        if not _PATTERN_CHARS.match(text) or "{" in text.replace("{user}", ""):
            raise ValueError(
                f"bad repository pattern {text[:100]!r}: use [a-z0-9._-], '/', '*', '**' and "
                "{user}"
            )
        self.text = text
        self.has_user = "{user}" in text
        out: list[str] = []
        i = 0
        seen_user = False
        while i < len(text):
            if text.startswith("{user}", i):
                out.append("(?P=user)" if seen_user else "(?P<user>[^/]+)")
                seen_user = True
                i += len("{user}")
            elif text.startswith("**", i):
                out.append(".*")
                i += 2
            elif text[i] == "*":
                out.append("[^/]*")
                i += 1
            else:
                out.append(re.escape(text[i]))
                i += 1
        self._regex = re.compile("^" + "".join(out) + "$")

    def matches(self, repository: str, user: str | None) -> bool:
        match = self._regex.match(repository)
        if match is None:
            return False
        return not self.has_user or match.group("user") == user


@dataclass(frozen=True, slots=True)
class Rule:
    who: frozenset[str]
    repositories: tuple[Pattern, ...]
    actions: frozenset[str]

    def applies_to(self, identity: Identity) -> bool:
        if "anonymous" in self.who:
            return True
        if not identity.authenticated:
            return False
        if "authenticated" in self.who:
            return True
        if identity.name is not None and identity.name in self.who:
            return True
        return any(f"group:{group}" in self.who for group in identity.groups)


def _strings(value: Any, where: str, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: {key} must be a string or a non-empty list of strings")


def _rule(index: int, table: Any) -> Rule:
    where = f"access rule {index}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table with who, repositories and actions")
    unknown = set(table) - {"who", "repositories", "actions"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {sorted(unknown)[0]!r} (expected who, repositories, actions)"
        )
    if "who" not in table or "actions" not in table:
        raise ConfigError(f"{where}: who and actions are required")
    who = _strings(table["who"], where, "who")
    for entry in who:
        if not _WHO.match(entry):
            raise ConfigError(f"{where}: bad who entry {entry[:60]!r}")
    actions = set(_strings(table["actions"], where, "actions"))
    if "*" in actions:
        actions = set(ALL_ACTIONS)
    bad = actions - ALL_ACTIONS
    if bad:
        raise ConfigError(
            f"{where}: unknown action {sorted(bad)[0]!r} (pull, push, delete, catalog, admin, *)"
        )
    patterns: list[Pattern] = []
    if "repositories" in table:
        for text in _strings(table["repositories"], where, "repositories"):
            try:
                patterns.append(Pattern(text))
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
    if actions & REPOSITORY_ACTIONS and not patterns:
        raise ConfigError(f"{where}: pull, push and delete need repositories")
    return Rule(frozenset(who), tuple(patterns), frozenset(actions))


class Policy:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, tables: Iterable[Any]) -> Policy:
        """From the configuration's `[[access]]` tables (rules numbered from 1 in errors)."""
        return cls([_rule(i, table) for i, table in enumerate(tables, start=1)])

    def allowed_actions(self, identity: Identity, repository: str) -> frozenset[str]:
        """What `identity` may do to `repository`: a subset of pull, push, delete."""
        if identity.grants is not None:
            return granted(identity.grants, "repository", repository) & REPOSITORY_ACTIONS
        actions: set[str] = set()
        for rule in self.rules:
            if (
                rule.actions & REPOSITORY_ACTIONS
                and rule.applies_to(identity)
                and any(p.matches(repository, identity.name) for p in rule.repositories)
            ):
                actions |= rule.actions & REPOSITORY_ACTIONS
        if identity.limits is not None:
            actions &= limit_actions(identity.limits, "repository", repository, identity.name)
        return frozenset(actions)

    def has_right(self, identity: Identity, right: str) -> bool:
        """A registry-wide right: `catalog` or `admin`."""
        if right not in REGISTRY_RIGHTS:
            raise ValueError(f"not a registry right: {right!r}")
        if identity.grants is not None:
            return bool(granted(identity.grants, "registry", right))
        if identity.limits is not None and not limit_actions(identity.limits, "registry", right):
            return False
        return any(right in r.actions and r.applies_to(identity) for r in self.rules)

    def may(self, identity: Identity, action: str, repository: str | None = None) -> bool:
        """One decision: `may(who, "push", "team/app")`, `may(who, "catalog")`."""
        if action in (CATALOG, ADMIN):
            return self.has_right(identity, action)
        if repository is None:
            raise ValueError(f"{action!r} needs a repository")
        return action in self.allowed_actions(identity, repository)


# -- machine-token scope patterns -------------------------------------------------------
# `repository:team/*:pull,push` or `registry:catalog:*`: like token scopes, but the name is a
# repository pattern as in the policy.


def check_limits(texts: Iterable[str]) -> list[str]:
    """Validate a machine token's scope patterns; ValueError (one line) for a bad one."""
    out = []
    for text in texts:
        _parse_limit(text)
        out.append(text)
    return out


@functools.lru_cache(maxsize=1024)
def _parse_limit(text: str) -> tuple[str, Pattern, frozenset[str]]:
    head, _, actions_text = text.rpartition(":")
    rtype, _, name = head.partition(":")
    actions = frozenset(a for a in actions_text.split(",") if a)
    if rtype not in ("repository", "registry") or not name or not actions:
        raise ValueError(f"bad token scope {text[:100]!r}: expected repository:PATTERN:ACTIONS")
    allowed = REPOSITORY_ACTIONS if rtype == "repository" else frozenset({"*"})
    if "*" in actions:
        actions = allowed
    if not actions <= allowed:
        raise ValueError(f"bad token scope {text[:100]!r}: unknown actions")
    if rtype == "registry" and name not in REGISTRY_RIGHTS:
        raise ValueError(f"bad token scope {text[:100]!r}: registry:catalog or registry:admin")
    return rtype, Pattern(name), actions


def limit_actions(
    limits: Iterable[str], rtype: str, name: str, user: str | None = None
) -> frozenset[str]:
    actions: set[str] = set()
    for text in limits:
        try:
            ltype, pattern, lactions = _parse_limit(text)
        except ValueError:
            continue  # validated when the token was made; a stray row grants nothing
        if ltype == rtype and pattern.matches(name, user):
            actions |= lactions
    return frozenset(actions)
