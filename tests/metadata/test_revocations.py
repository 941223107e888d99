"""Revocations are written in the same transaction as the change that voids credentials, each
under a generation of its own, on SQLite and PostgreSQL; a database made before they
existed gains their tables in place."""

from __future__ import annotations

import trio
from sqlalchemy import text

from regd.auth import create_machine_token
from regd.clock import ManualClock
from regd.metadata import MetadataStore
from regd.metadata import accounts as rows
from regd.metadata.accounts import password_stamp
from regd.metadata.revocations import (
    ACCOUNT,
    KEEP,
    MACHINE_TOKEN,
    News,
    Revocation,
    read_revocations,
)

# Any bcrypt-shaped strings do: nothing here checks a password.
HASH_A = "$2b$04$" + "a" * 53
HASH_B = "$2b$04$" + "b" * 53


async def token_of(store: MetadataStore, clock: ManualClock, owner: str) -> str:
    token, _ = await create_machine_token(
        store, clock, owner=owner, name="ci", scopes=["repository:a:pull"], expires_in=None
    )
    return token.id


async def test_changes_that_void_credentials_write_revocations(
    store: MetadataStore, clock: ManualClock
) -> None:
    for name in ("alice", "bob", "carol"):
        await rows.add_account(store, name, HASH_A, [], clock.now())
    alice_token = await token_of(store, clock, "alice")
    carol_token = await token_of(store, clock, "carol")
    assert await read_revocations(store, 0) == News(0, [], False)
    t0 = clock.now()

    assert await rows.revoke_machine_token(store, alice_token)
    assert not await rows.revoke_machine_token(store, alice_token)
    clock.advance(1)
    # Groups, an unchanged password and enabling void nothing.
    assert await rows.update_account(store, "bob", groups=["ops"])
    assert await rows.update_account(store, "bob", password_hash=HASH_A, disabled=False)
    assert await rows.update_account(store, "bob", password_hash=HASH_B)
    clock.advance(1)
    assert await rows.update_account(store, "bob", disabled=True)
    assert await rows.update_account(store, "bob", disabled=True)
    assert not await rows.update_account(store, "nobody", password_hash=HASH_B)
    assert not await rows.update_account(store, "nobody", disabled=True)
    clock.advance(1)
    assert await rows.remove_account(store, "carol")
    assert not await rows.remove_account(store, "carol")

    news = await read_revocations(store, 0)
    assert news.generation == 4
    assert news.everything
    assert sorted(news.rows, key=lambda r: (r.generation, r.kind)) == [
        Revocation(1, MACHINE_TOKEN, alice_token, t0),
        Revocation(2, ACCOUNT, "bob", t0 + 1, password_stamp(HASH_A)),
        Revocation(3, ACCOUNT, "bob", t0 + 2, None),
        Revocation(4, ACCOUNT, "carol", t0 + 3, password_stamp(HASH_A)),
        Revocation(4, MACHINE_TOKEN, carol_token, t0 + 3),
    ]
    # Up to date: nothing more to read. Behind: only what is new.
    assert (await read_revocations(store, 4)).rows == []
    later = await read_revocations(store, 2)
    assert (later.generation, later.everything) == (4, False)
    assert sorted((r.generation, r.subject) for r in later.rows) == sorted(
        [(3, "bob"), (4, "carol"), (4, carol_token)]
    )
    # Ahead of the database (it was replaced by an older copy): everything, to start over.
    ahead = await read_revocations(store, 9)
    assert (ahead.generation, ahead.everything, len(ahead.rows)) == (4, True, 5)


async def test_a_failed_change_writes_no_revocation(store: MetadataStore) -> None:
    assert not await rows.revoke_machine_token(store, "0123456789abcdef")
    assert not await rows.remove_account(store, "nobody")
    assert await read_revocations(store, 0) == News(0, [], False)


async def test_concurrent_changes_take_generations_in_turn(
    store: MetadataStore, clock: ManualClock
) -> None:
    names = [f"user{i}" for i in range(12)]
    for name in names:
        await rows.add_account(store, name, HASH_A, [], clock.now())
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(lambda n=name: rows.update_account(store, n, disabled=True))
    news = await read_revocations(store, 0)
    assert news.generation == len(names)
    assert sorted(r.generation for r in news.rows) == list(range(1, len(names) + 1))
    assert sorted(r.subject for r in news.rows) == sorted(names)


async def test_old_revocations_are_forgotten_by_the_next_change(
    store: MetadataStore, clock: ManualClock
) -> None:
    await rows.add_account(store, "alice", HASH_A, [], clock.now())
    await rows.add_account(store, "bob", HASH_A, [], clock.now())
    await rows.update_account(store, "alice", disabled=True)
    clock.advance(KEEP + 1)
    await rows.update_account(store, "bob", disabled=True)
    news = await read_revocations(store, 0)
    assert [(r.generation, r.subject) for r in news.rows] == [(2, "bob")]


async def test_a_database_from_before_revocations_gains_their_tables(
    store: MetadataStore, clock: ManualClock
) -> None:
    await rows.add_account(store, "alice", HASH_A, [], clock.now())

    def drop() -> None:
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE revocations"))
            conn.execute(text("DROP TABLE revocation_generation"))

    await trio.to_thread.run_sync(drop)
    store.create_schema()
    assert await rows.update_account(store, "alice", disabled=True)
    news = await read_revocations(store, 0)
    assert [(r.generation, r.subject) for r in news.rows] == [(1, "alice")]
    assert await rows.get_account(store, "alice") is not None
