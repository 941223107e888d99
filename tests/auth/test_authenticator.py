"""The Authenticator facade and the account rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from typing import NoReturn

import pytest
import trio

from regd.auth import (
    ANONYMOUS,
    Authenticator,
    Forbidden,
    InvalidScope,
    Throttled,
    TokenIssuer,
    TokenVerifier,
    Unauthenticated,
    Via,
    create_machine_token,
    hash_password,
    revocation,
)
from regd.auth.keys import KeyRing
from regd.auth.revocation import REFRESH, RETRY, SETTLE, Revocations
from regd.clock import ManualClock
from regd.errors import BackendError
from regd.metadata import MetadataError, MetadataStore
from regd.metadata import accounts as rows
from tests.auth.conftest import ISSUER, REALM, SERVICE


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def add(store: MetadataStore, name: str, password: str, groups: list[str]) -> None:
    await rows.add_account(store, name, await hash_password(password, rounds=4), groups, 1.0)


async def test_account_rows(store: MetadataStore) -> None:
    await add(store, "alice", "pw", ["dev", "ops", "dev"])
    with pytest.raises(rows.AccountExists):
        await add(store, "alice", "other", [])
    account = await rows.get_account(store, "alice")
    assert account is not None
    assert account.groups == ("dev", "ops")
    assert not account.disabled
    assert await rows.update_account(store, "alice", disabled=True, groups=["x"])
    account = await rows.get_account(store, "alice")
    assert account is not None
    assert (account.disabled, account.groups) == (True, ("x",))
    assert not await rows.update_account(store, "nobody", disabled=True)
    assert [a.name for a in await rows.list_accounts(store)] == ["alice"]
    clock = ManualClock()
    token, _ = await create_machine_token(
        store, clock, owner="alice", name="ci", scopes=["repository:team/*:pull"], expires_in=60
    )
    with pytest.raises(rows.NoSuchAccount):
        await create_machine_token(
            store, clock, owner="nobody", name="ci", scopes=["repository:a:pull"], expires_in=None
        )
    (listed,) = await rows.list_machine_tokens(store, owner="alice")
    assert listed == token
    assert await rows.revoke_machine_token(store, token.id)
    assert not await rows.revoke_machine_token(store, token.id)
    assert await rows.remove_account(store, "alice")
    assert await rows.list_machine_tokens(store) == []


async def test_audit_rows(store: MetadataStore) -> None:
    for i in range(5):
        await rows.add_audit(
            store,
            rows.AuditRecord(
                ts=100.0 + i,
                actor="alice",
                action="push",
                outcome="success",
                repository="a" if i % 2 else "b",
                reference=f"sha256:{i}",
                remote_addr="::1",
            ),
        )
    assert [r.ts for r in await rows.list_audit(store)] == [100, 101, 102, 103, 104]
    assert [r.ts for r in await rows.list_audit(store, repository="a")] == [101, 103]
    assert [r.ts for r in await rows.list_audit(store, since=103, limit=1)] == [104]


async def test_basic_login_and_bad_credentials(auth: Authenticator, store: MetadataStore) -> None:
    await add(store, "alice", "pw", ["dev"])
    me = await auth.authenticate(basic("alice", "pw"), "10.0.0.1")
    assert (me.name, me.via, me.groups) == ("alice", Via.PASSWORD, {"dev"})
    assert auth.may(me, "push", "team/app")
    assert await auth.authenticate(None, "10.0.0.1") == ANONYMOUS
    bad = {
        "wrong user name or password": basic("alice", "nope"),
        "wrong user name or password ": basic("mallory", "pw"),
        "malformed Basic": "Basic !!!not-base64",
        "expected user:password": "Basic " + base64.b64encode(b"no-colon").decode(),
        "longer than": "Basic " + "A" * 9000,
        "unsupported authorization scheme": "Digest abc",
    }
    for message, header in bad.items():
        with pytest.raises(Unauthenticated) as info:
            await auth.authenticate(header, "10.0.0.2")
        assert message.strip() in str(info.value)
    failures = await rows.list_audit(store)
    assert [(r.action, r.outcome) for r in failures] == [("login", "failure")] * 2
    assert all("nope" not in (r.detail or "") for r in failures)


async def test_disabled_account_and_password_change(
    auth: Authenticator, store: MetadataStore, clock: ManualClock
) -> None:
    await add(store, "bob", "pw", [])
    await auth.authenticate(basic("bob", "pw"), "h")
    await rows.update_account(store, "bob", disabled=True)
    # Remembered, but no longer than it takes to learn of the revocation, not a minute.
    clock.advance(REFRESH)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(basic("bob", "pw"), "h")


async def test_failed_logins_are_throttled(auth: Authenticator, store: MetadataStore) -> None:
    await add(store, "alice", "pw", [])
    for _ in range(10):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(basic("alice", "guess"), "10.9.9.9")
    with pytest.raises(Throttled) as info:
        await auth.authenticate(basic("alice", "pw"), "10.1.1.1")
    assert info.value.retry_after > 0


async def test_machine_tokens(
    auth: Authenticator, store: MetadataStore, clock: ManualClock
) -> None:
    await add(store, "alice", "pw", ["dev"])
    token, secret = await create_machine_token(
        store,
        clock,
        owner="alice",
        name="ci",
        scopes=["repository:team/*:pull"],
        expires_in=3600,
    )
    assert secret not in (token.secret_hash, token.id)
    for user in ("ci", "alice"):
        who = await auth.authenticate(basic(user, secret), "h")
        assert (who.name, who.via, who.token_id) == ("alice", Via.MACHINE_TOKEN, token.id)
        assert auth.allowed_actions(who, "team/app") == {"pull"}  # owner may push; token not
    with pytest.raises(Unauthenticated):
        await auth.authenticate(basic("bob", secret), "h")
    with pytest.raises(Unauthenticated):
        await auth.authenticate(basic("ci", secret[:-1] + ("A" if secret[-1] != "A" else "B")), "h")
    stored = await rows.get_machine_token(store, token.id)
    assert stored is not None
    assert stored.last_used_at == clock.now()
    await rows.revoke_machine_token(store, token.id)
    clock.advance(61)  # past the credential cache
    with pytest.raises(Unauthenticated):
        await auth.authenticate(basic("ci", secret), "h")
    _, expiring = await create_machine_token(
        store, clock, owner="alice", name="short", scopes=["repository:a:pull"], expires_in=10
    )
    clock.advance(11)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(basic("short", expiring), "h")


async def test_token_service_grants_asked_and_allowed(
    auth: Authenticator, store: MetadataStore
) -> None:
    await add(store, "alice", "pw", ["dev"])
    answer = await auth.basic_token_response(
        basic("alice", "pw"),
        "h",
        service=SERVICE,
        scopes=[
            "repository:team/app:pull,push,delete",
            "repository:secret/x:pull",
            "registry:catalog:*",
        ],
    )
    assert answer["token"] == answer["access_token"]
    assert answer["issued_at"].endswith("Z")
    assert "refresh_token" not in answer
    who = await auth.authenticate("Bearer " + answer["token"], "h")
    assert who.via is Via.BEARER
    assert auth.allowed_actions(who, "team/app") == {"pull", "push"}  # no error for asking more
    assert auth.allowed_actions(who, "secret/x") == set()
    assert auth.may(who, "catalog")
    # Anonymous gets a token too, carrying only what anonymous may do.
    anon = await auth.basic_token_response(
        None, "h", service=SERVICE, scopes=["repository:public/a:pull,push"]
    )
    who = await auth.authenticate("Bearer " + anon["token"], "h")
    assert who.name is None
    assert auth.allowed_actions(who, "public/a") == {"pull"}
    # A pull token used to push, or for another repository.
    assert not auth.may(who, "push", "public/a")
    assert not auth.may(who, "pull", "public/b")
    with pytest.raises(InvalidScope):
        await auth.basic_token_response(
            None, "h", service=SERVICE, scopes=[f"repository:r{i}:pull" for i in range(1000)]
        )
    with pytest.raises(InvalidScope):
        await auth.basic_token_response(
            None, "h", service=SERVICE, scopes=["repository:public/../secret:pull"]
        )
    with pytest.raises(Forbidden, match="unknown service"):
        await auth.basic_token_response(None, "h", service="other", scopes=[])


async def test_refresh_tokens(auth: Authenticator, store: MetadataStore) -> None:
    await add(store, "alice", "pw", ["dev"])
    answer = await auth.basic_token_response(
        basic("alice", "pw"), "h", service=SERVICE, scopes=[], offline_token=True
    )
    refresh = answer["refresh_token"]
    again = await auth.oauth_token(
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": SERVICE,
            "scope": "repository:team/app:pull repository:alice/x:push",
        },
        "h",
    )
    assert again["scope"] == "repository:team/app:pull repository:alice/x:push"
    pw = await auth.oauth_token(
        {"grant_type": "password", "username": "alice", "password": "pw", "service": SERVICE},
        "h",
    )
    assert pw["refresh_token"]
    with pytest.raises(Unauthenticated):
        await auth.oauth_token(
            {"grant_type": "password", "username": "alice", "password": "x", "service": SERVICE},
            "h",
        )
    # A changed password voids the refresh tokens issued before.
    await rows.update_account(store, "alice", password_hash=await hash_password("new", rounds=4))
    with pytest.raises(Unauthenticated, match="log in again"):
        await auth.oauth_token({"grant_type": "refresh_token", "refresh_token": refresh}, "h")
    with pytest.raises(Forbidden):
        await auth.oauth_token({"grant_type": "client_credentials"}, "h")


async def test_client_certificate_names_the_account(
    auth: Authenticator, store: MetadataStore
) -> None:
    await add(store, "alice", "pw", ["dev"])
    who = await auth.authenticate(None, "h", client_cert_subject="alice")
    assert (who.name, who.via) == ("alice", Via.CLIENT_CERTIFICATE)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(None, "h", client_cert_subject="nobody")


async def test_challenges(auth: Authenticator, store: MetadataStore, clock: ManualClock) -> None:
    scope = auth.scope_for("team/app", ["pull", "push"])
    assert auth.challenge([scope]) == (
        f'Bearer realm="{REALM}",service="{SERVICE}",scope="repository:team/app:pull,push"'
    )
    assert auth.challenge([scope], error="insufficient_scope").endswith(
        ',error="insufficient_scope"'
    )
    assert auth.challenge([auth.scope_for(None, ["catalog"])]).endswith(
        'scope="registry:catalog:*"'
    )
    basic_only = Authenticator(store, auth.policy, clock, realm="regd", service=SERVICE)
    assert basic_only.challenge([scope]) == 'Basic realm="regd"'


async def test_bearer_from_another_service_is_refused(
    auth: Authenticator, keys: KeyRing, clock: ManualClock
) -> None:
    foreign = TokenIssuer(keys, ISSUER, clock).access_token("alice", "elsewhere", [])
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate("Bearer " + foreign.token, "h")
    assert info.value.error == "invalid_token"
    assert isinstance(auth.verifier, TokenVerifier)


# -- revocations: on every process within REFRESH seconds ---------------------------------


async def bearer(auth: Authenticator, authorization: str) -> str:
    answer = await auth.basic_token_response(
        authorization, "h", service=SERVICE, scopes=["repository:team/app:pull"]
    )
    return "Bearer " + str(answer["token"])


async def refused(auth: Authenticator, header: str, error: str | None) -> None:
    """Refused with `error` in the challenge: invalid_token for a token, none for Basic."""
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(header, "h")
    assert info.value.error == error


async def test_a_revoked_machine_token_voids_its_access_tokens_and_remembered_login(
    auth: Authenticator, store: MetadataStore, clock: ManualClock
) -> None:
    await add(store, "alice", "pw", ["dev"])
    token, secret = await create_machine_token(
        store, clock, owner="alice", name="ci", scopes=["repository:team/*:pull"], expires_in=None
    )
    login = basic("ci", secret)
    from_token = await bearer(auth, login)
    from_password = await bearer(auth, basic("alice", "pw"))
    assert (await auth.authenticate(from_token, "h")).token_id == token.id
    await auth.authenticate(login, "h")  # remembered from here on
    # Revoked by another process: this one learns it within REFRESH, not at expiry.
    assert await rows.revoke_machine_token(store, token.id)
    clock.advance(REFRESH)
    await refused(auth, from_token, "invalid_token")
    await refused(auth, login, None)
    # The owner's own credentials are not the token's.
    assert (await auth.authenticate(from_password, "h")).name == "alice"
    assert (await auth.authenticate(basic("alice", "pw"), "h")).name == "alice"


async def test_a_disabled_account_loses_its_access_tokens_and_remembered_logins(
    auth: Authenticator, store: MetadataStore, clock: ManualClock
) -> None:
    await add(store, "alice", "pw", ["dev"])
    await add(store, "bob", "pw", ["dev"])
    _, secret = await create_machine_token(
        store, clock, owner="alice", name="ci", scopes=["repository:team/*:pull"], expires_in=None
    )
    alice = [basic("alice", "pw"), basic("ci", secret)]
    alice_tokens = [await bearer(auth, header) for header in alice]
    bob = [basic("bob", "pw"), await bearer(auth, basic("bob", "pw"))]
    for header in alice + bob:
        await auth.authenticate(header, "h")
    clock.advance(30)
    assert await rows.update_account(store, "alice", disabled=True)
    clock.advance(REFRESH)
    for header in alice_tokens:
        await refused(auth, header, "invalid_token")
    for header in alice:
        await refused(auth, header, None)
    for header in bob:
        assert (await auth.authenticate(header, "h")).name == "bob"
    # Enabled again: what is issued from then on works (after SETTLE, see revocation.py).
    assert await rows.update_account(store, "alice", disabled=False)
    clock.advance(SETTLE)
    again = await bearer(auth, basic("alice", "pw"))
    assert (await auth.authenticate(again, "h")).name == "alice"
    assert (await auth.authenticate(basic("alice", "pw"), "h")).name == "alice"
    await refused(auth, alice_tokens[0], "invalid_token")


async def test_a_new_password_voids_what_the_old_one_got_and_nothing_else(
    auth: Authenticator, store: MetadataStore, clock: ManualClock
) -> None:
    await add(store, "alice", "old", ["dev"])
    _, secret = await create_machine_token(
        store, clock, owner="alice", name="ci", scopes=["repository:team/*:pull"], expires_in=None
    )
    old_login = basic("alice", "old")
    old_token = await bearer(auth, old_login)
    machine_token = await bearer(auth, basic("ci", secret))
    # One issued before access tokens carried the password's stamp (before an upgrade).
    assert auth.issuer is not None
    unstamped = auth.issuer.access_token("alice", SERVICE, [])
    await auth.authenticate(old_login, "h")
    await rows.update_account(store, "alice", password_hash=await hash_password("new", rounds=4))
    # In the same second: what the new password gets is good at once.
    new_token = await bearer(auth, basic("alice", "new"))
    clock.advance(REFRESH)
    await refused(auth, old_token, "invalid_token")
    await refused(auth, "Bearer " + unstamped.token, "invalid_token")
    await refused(auth, old_login, None)
    assert (await auth.authenticate(new_token, "h")).name == "alice"
    assert (await auth.authenticate(basic("alice", "new"), "h")).name == "alice"
    # A machine token does not hang on its owner's password.
    assert (await auth.authenticate(machine_token, "h")).name == "alice"


async def test_a_removed_account_loses_everything_and_its_name_can_be_used_again(
    auth: Authenticator, store: MetadataStore, clock: ManualClock
) -> None:
    await add(store, "alice", "pw", ["dev"])
    _, secret = await create_machine_token(
        store, clock, owner="alice", name="ci", scopes=["repository:team/*:pull"], expires_in=None
    )
    logins = [basic("alice", "pw"), basic("ci", secret)]
    tokens = [await bearer(auth, header) for header in logins]
    for header in logins:
        await auth.authenticate(header, "h")
    assert await rows.remove_account(store, "alice")
    await add(store, "alice", "pw", ["dev"])
    clock.advance(REFRESH)
    for header in tokens:
        await refused(auth, header, "invalid_token")
    await refused(auth, logins[1], None)
    # The new account's password is another hash: its login and tokens are its own.
    assert (await auth.authenticate(logins[0], "h")).name == "alice"
    fresh = await bearer(auth, basic("alice", "pw"))
    assert (await auth.authenticate(fresh, "h")).name == "alice"


async def test_the_revoking_process_refuses_at_once(
    auth: Authenticator, store: MetadataStore
) -> None:
    await add(store, "alice", "pw", ["dev"])
    token = await bearer(auth, basic("alice", "pw"))
    await auth.authenticate(token, "h")
    await rows.update_account(store, "alice", disabled=True)
    auth.revocations.expire()  # what the admin API does after a change
    await refused(auth, token, "invalid_token")


async def test_a_database_that_cannot_be_read_gives_503_not_a_stale_answer(
    auth: Authenticator,
    store: MetadataStore,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await add(store, "alice", "pw", ["dev"])
    auth.revocations = Revocations(store, clock, patience=0.2)
    token = await bearer(auth, basic("alice", "pw"))
    await auth.authenticate(token, "h")

    async def broken(store: MetadataStore, known: int) -> NoReturn:
        raise MetadataError("database error: gone")

    async def hanging(store: MetadataStore, known: int) -> NoReturn:
        await trio.sleep_forever()

    monkeypatch.setattr(revocation, "read_revocations", broken)
    # Younger than REFRESH: decided with the copy it has, while the refresh fails.
    clock.advance(REFRESH * 0.75)
    await auth.authenticate(token, "h")
    clock.advance(REFRESH * 0.5)
    with pytest.raises(MetadataError, match="gone"):
        await auth.authenticate(token, "h")
    assert issubclass(MetadataError, BackendError)  # answered 503 by regd.api.errors
    await trio.sleep(RETRY)
    monkeypatch.setattr(revocation, "read_revocations", hanging)
    with trio.fail_after(5):
        with pytest.raises(MetadataError, match="no answer"):
            await auth.authenticate(token, "h")
        # The next request waits for the same refresh, not another one of its own.
        with pytest.raises(MetadataError, match="no answer"):
            await auth.authenticate(basic("alice", "pw"), "h")
