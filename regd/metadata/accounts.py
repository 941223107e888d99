"""Accounts, machine tokens and the audit trail, as rows every replica shares.

The tables live on the same MetaData as `regd.metadata.schema`, so `create_schema` makes them
with the others. Nothing here checks a password or a secret: the rows hold hashes only, and
`regd.auth` decides what they mean.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    false,
    select,
    update,
)

from regd.errors import RegdError
from regd.metadata.revocations import ACCOUNT, MACHINE_TOKEN, record
from regd.metadata.schema import metadata

if TYPE_CHECKING:
    from regd.metadata.store import MetadataStore


def _name(length: int) -> String:
    return String(length).with_variant(String(length, collation="C"), "postgresql")


_Id = BigInteger().with_variant(Integer(), "sqlite")

# `groups` is a JSON list: an account belongs to a handful, and the policy reads them all at
# once, so a join table would buy nothing.
accounts = Table(
    "accounts",
    metadata,
    Column("name", _name(64), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("groups", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=false()),
)

# The secret is stored as its SHA-256 only; `scopes` is a JSON list of scope patterns that
# bound what the token grants beyond its owner's rights.
machine_tokens = Table(
    "machine_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", _name(64), nullable=False),
    Column("owner", _name(64), ForeignKey("accounts.name", ondelete="CASCADE"), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("last_used_at", Float),
    Column("revoked", Boolean, nullable=False, server_default=false()),
    Index("machine_tokens_owner", "owner"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("actor", _name(255)),
    Column("action", String(32), nullable=False),
    Column("repository", _name(255)),
    Column("reference", _name(200)),
    Column("remote_addr", String(64)),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    Index("audit_log_ts", "ts"),
    Index("audit_log_repository_ts", "repository", "ts"),
)


def password_stamp(password_hash: str) -> str:
    """What a credential issued for a password remembers of it (refresh and access tokens,
    UI sessions): a changed password has another stamp."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:24]


class AccountExists(RegdError):
    """An account with that name is already stored."""


class NoSuchAccount(RegdError):
    """The account a change names is not stored."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    password_hash: str
    groups: tuple[str, ...]
    created_at: float
    disabled: bool


@dataclass(frozen=True, slots=True)
class MachineToken:
    id: str
    name: str
    owner: str
    scopes: tuple[str, ...]
    secret_hash: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class AuditRecord:
    ts: float
    actor: str | None
    action: str
    outcome: str
    repository: str | None = None
    reference: str | None = None
    remote_addr: str | None = None
    detail: str | None = None


def _account(row: Sequence[Any]) -> Account:
    return Account(row[0], row[1], tuple(json.loads(row[2])), row[3], bool(row[4]))


_ACCOUNT_COLUMNS = (
    accounts.c.name,
    accounts.c.password_hash,
    accounts.c.groups,
    accounts.c.created_at,
    accounts.c.disabled,
)


# -- accounts ---------------------------------------------------------------------------


async def add_account(
    store: MetadataStore, name: str, password_hash: str, groups: Sequence[str], now: float
) -> None:
    """Store a new account; AccountExists if the name is taken."""

    def w(conn: Connection) -> bool:
        stmt = (
            store.insert(accounts)
            .values(
                name=name,
                password_hash=password_hash,
                groups=json.dumps(sorted(set(groups))),
                created_at=now,
                disabled=False,
            )
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(accounts.c.name)
        )
        # rowcount of a skipped conflicting insert is not portable; RETURNING is.
        return conn.execute(stmt).first() is not None

    if not await store.run_write(w):
        raise AccountExists(f"account {name!r} already exists")


def has_accounts(store: MetadataStore) -> bool:
    """Whether any account is stored. Blocking: for start-up only."""
    with store.engine.connect() as conn:
        return conn.execute(select(accounts.c.name).limit(1)).first() is not None


async def get_account(store: MetadataStore, name: str) -> Account | None:
    def q(conn: Connection) -> Account | None:
        row = conn.execute(select(*_ACCOUNT_COLUMNS).where(accounts.c.name == name)).first()
        return None if row is None else _account(row)

    return await store.run_query(q)


async def list_accounts(store: MetadataStore) -> list[Account]:
    def q(conn: Connection) -> list[Account]:
        rows = conn.execute(select(*_ACCOUNT_COLUMNS).order_by(accounts.c.name))
        return [_account(row) for row in rows]

    return await store.run_read(q)


async def update_account(
    store: MetadataStore,
    name: str,
    *,
    password_hash: str | None = None,
    groups: Sequence[str] | None = None,
    disabled: bool | None = None,
) -> bool:
    """Change what is given; False if there is no such account. Disabling it, or giving it
    another password, revokes what was issued before (regd.metadata.revocations)."""
    values: dict[str, Any] = {}
    if password_hash is not None:
        values["password_hash"] = password_hash
    if groups is not None:
        values["groups"] = json.dumps(sorted(set(groups)))
    if disabled is not None:
        values["disabled"] = disabled

    def w(conn: Connection) -> bool:
        voided: list[tuple[str, str, str | None]] = []
        if password_hash is not None or disabled:
            c = accounts.c
            query = select(c.password_hash, c.disabled).where(c.name == name)
            row = conn.execute(store.exclusive(query, accounts)).first()
            if row is None:
                return False
            if disabled and not row.disabled:
                # No stamp: every credential of the account, whatever it was issued for.
                voided.append((ACCOUNT, name, None))
            elif password_hash is not None and password_hash != row.password_hash:
                voided.append((ACCOUNT, name, password_stamp(row.password_hash)))
        stmt = update(accounts).where(accounts.c.name == name)
        # With nothing to change, the UPDATE still answers whether the account exists.
        stmt = stmt.values(**values) if values else stmt.values(name=name)
        if conn.execute(stmt).rowcount != 1:
            return False
        if voided:
            record(conn, store.dialect, store.clock.now(), voided)
        return True

    return await store.run_write(w)


async def remove_account(store: MetadataStore, name: str) -> bool:
    """Delete an account and, with it, its machine tokens."""

    def w(conn: Connection) -> bool:
        c = accounts.c
        hashed = conn.execute(
            store.exclusive(select(c.password_hash).where(c.name == name), accounts)
        ).scalar()
        if hashed is None:
            return False
        owned = machine_tokens.c.owner == name
        tokens = conn.execute(select(machine_tokens.c.id).where(owned)).scalars().all()
        # Explicitly, since SQLite enforces the cascade only with foreign keys turned on.
        conn.execute(delete(machine_tokens).where(owned))
        conn.execute(delete(accounts).where(c.name == name))
        # What was issued for its password or its tokens, and nothing an account made again
        # under the same name is given.
        voided: list[tuple[str, str, str | None]] = [(ACCOUNT, name, password_stamp(hashed))]
        voided += [(MACHINE_TOKEN, token_id, None) for token_id in tokens]
        record(conn, store.dialect, store.clock.now(), voided)
        return True

    return await store.run_write(w)


# -- machine tokens ---------------------------------------------------------------------

_TOKEN_COLUMNS = (
    machine_tokens.c.id,
    machine_tokens.c.name,
    machine_tokens.c.owner,
    machine_tokens.c.scopes,
    machine_tokens.c.secret_hash,
    machine_tokens.c.created_at,
    machine_tokens.c.expires_at,
    machine_tokens.c.last_used_at,
    machine_tokens.c.revoked,
)


def _token(row: Sequence[Any]) -> MachineToken:
    return MachineToken(
        row[0],
        row[1],
        row[2],
        tuple(json.loads(row[3])),
        row[4],
        row[5],
        row[6],
        row[7],
        bool(row[8]),
    )


async def add_machine_token(store: MetadataStore, token: MachineToken) -> None:
    def w(conn: Connection) -> str | None:
        if conn.execute(select(accounts.c.name).where(accounts.c.name == token.owner)).first():
            conn.execute(
                machine_tokens.insert().values(
                    id=token.id,
                    name=token.name,
                    owner=token.owner,
                    scopes=json.dumps(list(token.scopes)),
                    secret_hash=token.secret_hash,
                    created_at=token.created_at,
                    expires_at=token.expires_at,
                    last_used_at=token.last_used_at,
                    revoked=token.revoked,
                )
            )
            return None
        return f"no account {token.owner!r} to own token {token.name!r}"

    problem = await store.run_write(w)
    if problem is not None:
        raise NoSuchAccount(problem)


async def get_machine_token(store: MetadataStore, token_id: str) -> MachineToken | None:
    def q(conn: Connection) -> MachineToken | None:
        row = conn.execute(select(*_TOKEN_COLUMNS).where(machine_tokens.c.id == token_id)).first()
        return None if row is None else _token(row)

    return await store.run_query(q)


async def list_machine_tokens(store: MetadataStore, owner: str | None = None) -> list[MachineToken]:
    def q(conn: Connection) -> list[MachineToken]:
        stmt = select(*_TOKEN_COLUMNS).order_by(machine_tokens.c.owner, machine_tokens.c.name)
        if owner is not None:
            stmt = stmt.where(machine_tokens.c.owner == owner)
        return [_token(row) for row in conn.execute(stmt)]

    return await store.run_read(q)


async def revoke_machine_token(store: MetadataStore, token_id: str) -> bool:
    def w(conn: Connection) -> bool:
        stmt = (
            update(machine_tokens)
            .where(machine_tokens.c.id == token_id, machine_tokens.c.revoked == false())
            .values(revoked=True)
        )
        if conn.execute(stmt).rowcount != 1:
            return False
        record(conn, store.dialect, store.clock.now(), [(MACHINE_TOKEN, token_id, None)])
        return True

    return await store.run_write(w)


async def touch_machine_token(store: MetadataStore, token_id: str, now: float) -> None:
    def w(conn: Connection) -> None:
        conn.execute(
            update(machine_tokens).where(machine_tokens.c.id == token_id).values(last_used_at=now)
        )

    await store.run_write(w)


# -- audit ------------------------------------------------------------------------------

# Bounds on what one audit row keeps of client-supplied text.
_AUDIT_LIMITS = {"actor": 255, "repository": 255, "reference": 200, "remote_addr": 64}
_DETAIL_LIMIT = 2000


async def add_audit(store: MetadataStore, record: AuditRecord) -> None:
    values: dict[str, Any] = {
        "ts": record.ts,
        "action": record.action[:32],
        "outcome": record.outcome[:16],
        "detail": None if record.detail is None else record.detail[:_DETAIL_LIMIT],
    }
    for key, limit in _AUDIT_LIMITS.items():
        value = getattr(record, key)
        values[key] = None if value is None else value[:limit]

    def w(conn: Connection) -> None:
        conn.execute(audit_log.insert().values(**values))

    await store.run_write(w)


async def list_audit(
    store: MetadataStore,
    *,
    repository: str | None = None,
    since: float | None = None,
    limit: int = 1000,
) -> list[AuditRecord]:
    """The newest `limit` records (optionally of one repository, from `since` on), oldest
    first."""

    def q(conn: Connection) -> list[AuditRecord]:
        c = audit_log.c
        stmt = select(
            c.ts, c.actor, c.action, c.outcome, c.repository, c.reference, c.remote_addr, c.detail
        )
        if repository is not None:
            stmt = stmt.where(c.repository == repository)
        if since is not None:
            stmt = stmt.where(c.ts >= since)
        stmt = stmt.order_by(c.ts.desc(), c.id.desc()).limit(limit)
        return [AuditRecord(*row) for row in conn.execute(stmt)][::-1]

    return await store.run_read(q)
