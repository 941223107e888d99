"""Revocations: what voided credentials other processes may still hold, as rows every replica
reads.

A revoked machine token, or an account disabled, removed or given a new password, leaves
behind access tokens (valid for minutes) and remembered Basic logins in every process. The
change that voids them writes a row here in its own transaction; each process reads the
rows it has not seen yet (regd.auth.revocation) and refuses what they void.

`revocation_generation` is one row counting those changes: a process that is up to date
learns so from one primary-key read. Each change takes the next generation before it writes
its rows, and the generation's row stays locked until the change commits, so changes commit
in generation order and "the rows after generation N" never misses one committed late.

The tables live on the schema's MetaData, so `create_schema` makes them on an existing
database too; no other table changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    select,
)

from regd.metadata.engine import insert_for
from regd.metadata.schema import metadata

if TYPE_CHECKING:
    from regd.metadata.store import MetadataStore

MACHINE_TOKEN = "machine_token"
ACCOUNT = "account"

# Rows older than this are deleted by the next change. Longer than anything a revocation
# voids can live: an access token at most a day (auth.token_ttl's bound) plus the
# verifier's leeway, a remembered Basic login a minute. Revocations are rare, so a day's
# worth of rows is still a small table.
KEEP = 86400.0 + 3600.0

revocation_generation = Table(
    "revocation_generation",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("generation", BigInteger, nullable=False),
)

# kind 'machine_token': subject is the token's id; every credential it backs is void.
# kind 'account': subject is the account's name. With `stamp` (a password_stamp), what was
# issued for that password is void: the password changed or the account was removed. Without
# it (the account was disabled), every credential of the account checked up to `at`.
revocations = Table(
    "revocations",
    metadata,
    Column("generation", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column(
        "subject",
        String(64).with_variant(String(64, collation="C"), "postgresql"),
        nullable=False,
    ),
    Column("at", Float, nullable=False),
    Column("stamp", String(32)),
    PrimaryKeyConstraint("generation", "kind", "subject", name="revocations_pkey"),
    Index("revocations_at", "at"),
)


@dataclass(frozen=True, slots=True)
class Revocation:
    generation: int
    kind: str
    subject: str
    at: float
    stamp: str | None = None


def record(
    conn: Connection, dialect: str, now: float, voided: Sequence[tuple[str, str, str | None]]
) -> int:
    """Inside a change's own transaction: write its revocations, each (kind, subject, stamp),
    under the next generation (returned), and forget rows older than KEEP."""
    gen = revocation_generation
    bump = (
        insert_for(dialect, gen)
        .values(id=1, generation=1)
        .on_conflict_do_update(index_elements=["id"], set_={"generation": gen.c.generation + 1})
        .returning(gen.c.generation)
    )
    generation: int = conn.execute(bump).scalar_one()
    conn.execute(
        revocations.insert(),
        [
            {"generation": generation, "kind": kind, "subject": subject, "at": now, "stamp": stamp}
            for kind, subject, stamp in voided
        ],
    )
    conn.execute(delete(revocations).where(revocations.c.at < now - KEEP))
    return generation


_COLUMNS = (
    revocations.c.generation,
    revocations.c.kind,
    revocations.c.subject,
    revocations.c.at,
    revocations.c.stamp,
)


@dataclass(frozen=True, slots=True)
class News:
    """What `read_revocations` found: the generation read up to, the rows after the one
    asked about, and whether those are every row (the generation went backwards: the
    database was replaced or restored), so the reader starts over."""

    generation: int
    rows: list[Revocation]
    everything: bool


async def read_revocations(store: MetadataStore, known: int) -> News:
    """The rows written after generation `known`: one primary-key read when there are none."""

    def q(conn: Connection) -> News:
        current = conn.execute(
            select(revocation_generation.c.generation).where(revocation_generation.c.id == 1)
        ).scalar()
        generation = int(current or 0)
        if generation == known:
            return News(generation, [], False)
        since = known if generation > known else 0
        stmt = select(*_COLUMNS).where(revocations.c.generation > since)
        rows = [Revocation(*row) for row in conn.execute(stmt.order_by(revocations.c.generation))]
        # Rows committed between the two statements are as good as the ones before them.
        return News(max([generation, *(r.generation for r in rows)]), rows, since == 0)

    return await store.run_query(q)
