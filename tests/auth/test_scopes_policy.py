"""Scope strings and the access policy."""

from __future__ import annotations

import pytest

from regd.auth import ANONYMOUS, Identity, InvalidScope, Policy, Via, parse_scope, parse_scopes
from regd.auth.scopes import Scope
from regd.errors import ConfigError
from tests.auth.conftest import POLICY

ALICE = Identity("alice", Via.PASSWORD, frozenset({"dev"}))
BOB = Identity("bob", Via.PASSWORD)


def test_parse_scope() -> None:
    s = parse_scope("repository:team/app:pull,push")
    assert (s.type, s.name, s.actions) == ("repository", "team/app", {"pull", "push"})
    s = parse_scope("repository(plugin):team/app:*")
    assert (s.resource_class, s.actions) == ("plugin", {"*"})
    assert parse_scope("registry:catalog:*").name == "catalog"
    assert str(parse_scope("repository:a/b:push,pull")) == "repository:a/b:pull,push"


@pytest.mark.parametrize(
    "text",
    [
        "repository:team/../etc:pull",
        "repository:team//app:pull",
        "repository:/team/app:pull",
        "repository:team/app/:pull",
        "repository:Team/App:pull",
        "repository:team/app:",
        "repository::pull",
        "repository",
        "repository:a%2f..:pull",
        "repo sitory:a:pull",
        "registry:everything:*",
        "repository:" + "a" * 600 + ":pull",
    ],
)
def test_path_tricks_and_garbage_are_refused(text: str) -> None:
    with pytest.raises(InvalidScope) as info:
        parse_scopes([text])
    assert "\n" not in str(info.value)


def test_scope_count_is_capped() -> None:
    asked = [f"repository:r{i}:pull" for i in range(1000)]
    with pytest.raises(InvalidScope, match="at most 64"):
        parse_scopes(asked)
    assert len(parse_scopes(asked[:64])) == 64
    # Space-separated scopes (the OAuth2 form) count one by one.
    with pytest.raises(InvalidScope):
        parse_scopes([" ".join(asked)])


def test_equal_resources_merge() -> None:
    merged = parse_scopes(["repository:a:pull", "repository:a:push repository:b:pull"])
    assert Scope("repository", "a", frozenset({"pull", "push"})) in merged
    assert len(merged) == 2


def test_policy_rules() -> None:
    policy = Policy.parse(POLICY)
    assert policy.allowed_actions(ANONYMOUS, "public/x/y") == {"pull"}
    assert policy.allowed_actions(ANONYMOUS, "team/app") == set()
    assert policy.allowed_actions(ANONYMOUS, "public") == set()  # ** needs a segment
    # `anonymous` rules apply to logged-in callers too.
    assert policy.allowed_actions(BOB, "public/x") == {"pull"}
    assert policy.allowed_actions(BOB, "bob/a/b") == {"pull", "push", "delete"}
    assert policy.allowed_actions(BOB, "alice/a") == set()
    assert policy.allowed_actions(ALICE, "team/app") == {"pull", "push"}
    assert policy.allowed_actions(ALICE, "team/app/sub") == set()  # * stays in one segment
    assert policy.allowed_actions(BOB, "team/app") == set()
    assert policy.may(ALICE, "catalog")
    assert not policy.may(BOB, "catalog")
    assert not policy.may(ALICE, "admin")
    assert not policy.may(ANONYMOUS, "pull", "anonymous/x")  # {user} never anonymous


def test_no_rule_no_access() -> None:
    policy = Policy.parse([])
    assert policy.allowed_actions(ALICE, "alice/x") == set()
    assert not policy.may(ALICE, "admin")


def test_machine_token_limits_narrow_the_owner() -> None:
    policy = Policy.parse(POLICY)
    token = Identity(
        "alice", Via.MACHINE_TOKEN, frozenset({"dev"}), limits=("repository:team/*:pull",)
    )
    assert policy.allowed_actions(token, "team/app") == {"pull"}
    assert policy.allowed_actions(token, "alice/x") == set()
    assert not policy.may(token, "catalog")
    own = Identity(
        "alice", Via.MACHINE_TOKEN, limits=("repository:{user}/**:*", "registry:catalog:*")
    )
    assert policy.allowed_actions(own, "alice/x") == {"pull", "push", "delete"}
    assert policy.may(own, "catalog")


def test_bearer_grants_are_all_there_is() -> None:
    policy = Policy.parse(POLICY)
    pull_only = Identity(
        "alice", Via.BEARER, grants=(Scope("repository", "team/app", frozenset({"pull"})),)
    )
    assert policy.may(pull_only, "pull", "team/app")
    assert not policy.may(pull_only, "push", "team/app")  # a pull token used to push
    assert not policy.may(pull_only, "pull", "team/other")  # a token for another repository
    assert not policy.may(pull_only, "catalog")
    star = Identity("x", Via.BEARER, grants=(Scope("repository", "a", frozenset({"*"})),))
    assert policy.allowed_actions(star, "a") == {"pull", "push", "delete"}


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            [{"who": "a", "actions": "pull"}],
            "access rule 1: pull, push and delete need repositories",
        ),
        ([{"who": "a", "repositories": "x", "actions": "fly"}], "unknown action 'fly'"),
        ([{"who": "a", "repos": "x", "actions": "pull"}], "unknown key 'repos'"),
        ([{"actions": "pull"}], "who and actions are required"),
        ([{"who": "a", "repositories": "X/**", "actions": "pull"}], "bad repository pattern"),
        ([{"who": "a", "repositories": "{owner}/x", "actions": "pull"}], "bad repository pattern"),
        ([{"who": [], "repositories": "x", "actions": "pull"}], "non-empty list"),
        (["pull"], "expected a table"),
    ],
)
def test_policy_errors_are_one_line(tables: list[object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Policy.parse(tables)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
