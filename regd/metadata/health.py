"""Whether the database answers (the readiness probe)."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from regd.metadata import schema as t
from regd.metadata.store import MetadataStore


async def ping(store: MetadataStore) -> None:
    """Read the schema version: the database answers and its tables are there (on SQLite, a
    `SELECT 1` would not even open the file). MetadataError otherwise."""

    def q(conn: Connection) -> None:
        conn.execute(select(func.max(t.schema_info.c.version))).scalar()

    await store.run_query(q)
