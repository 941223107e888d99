"""Registry-wide switches an operator flips at run time, as rows every replica reads.

One row per setting, its value a small JSON document: maintenance mode is the first. The
table lives on the schema's MetaData, so `create_schema` makes it on an existing database
too; no other table changes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, Float, String, Table, Text, select

from regd.metadata.schema import metadata

if TYPE_CHECKING:
    from regd.metadata.store import MetadataStore

settings = Table(
    "settings",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)


async def get_setting(store: MetadataStore, name: str) -> dict[str, Any] | None:
    """The setting's document, or None when it was never set."""

    def q(conn: Connection) -> str | None:
        value: str | None = conn.execute(
            select(settings.c.value).where(settings.c.name == name)
        ).scalar()
        return value

    raw = await store.run_query(q)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError:
        return None  # a damaged row reads as never set rather than failing every request
    return doc if isinstance(doc, dict) else None


async def put_setting(store: MetadataStore, name: str, value: dict[str, Any], now: float) -> None:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)

    def w(conn: Connection) -> None:
        stmt = store.insert(settings).values(name=name, value=text, updated_at=now)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"], set_={"value": text, "updated_at": now}
            )
        )

    await store.run_write(w)
