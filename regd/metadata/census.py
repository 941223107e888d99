"""Whether the metadata knows anything at all (used by the start-up check)."""

from __future__ import annotations

from sqlalchemy import Connection, select

from regd.metadata import schema as t
from regd.metadata.store import MetadataStore


async def knows_no_blob(store: MetadataStore) -> bool:
    """True when no blob row exists: a new database, or one that was lost."""

    def q(conn: Connection) -> bool:
        return conn.execute(select(t.blobs.c.digest).limit(1)).first() is None

    return await store.run_query(q)
