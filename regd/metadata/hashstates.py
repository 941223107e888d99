"""The running digest of each upload session, saved with the session after every chunk.

Any replica continues a session's digest from here instead of reading back the bytes the
session already holds. The table is its own, one row per session at most, removed with
the session by its foreign key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    LargeBinary,
    String,
    Table,
    bindparam,
    select,
)

from regd.metadata.engine import insert_for
from regd.metadata.schema import metadata
from regd.metadata.uploads import Uploads

# `kind` names the state's format (see regd.registry.hashing); `size` is the number of
# bytes it has hashed, always the session's size when saved.
upload_hash_states = Table(
    "upload_hash_states",
    metadata,
    Column(
        "upload_id",
        String(36),
        ForeignKey("uploads.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("algorithm", String(16), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("state", LargeBinary, nullable=False),
)


@dataclass(frozen=True, slots=True)
class HashState:
    algorithm: str
    kind: str
    size: int
    state: bytes


class _HashStatements:
    def __init__(self, dialect: str) -> None:
        h = upload_hash_states
        self.get = select(h.c.algorithm, h.c.kind, h.c.size, h.c.state).where(
            h.c.upload_id == bindparam("upload_id")
        )
        insert = insert_for(dialect, h)
        # One statement whether or not the session has a row yet.
        self.put = insert.on_conflict_do_update(
            index_elements=[h.c.upload_id],
            set_={
                "algorithm": insert.excluded.algorithm,
                "kind": insert.excluded.kind,
                "size": insert.excluded.size,
                "state": insert.excluded.state,
            },
        )


class HashStates(Uploads):
    def _prepare(self) -> None:
        super()._prepare()
        self._hash_sql = _HashStatements(self.dialect)

    async def get_hash_state(self, upload_id: str) -> HashState | None:
        def q(conn: Connection) -> HashState | None:
            row = conn.execute(self._hash_sql.get, {"upload_id": upload_id}).first()
            return None if row is None else HashState(row[0], row[1], int(row[2]), bytes(row[3]))

        return await self.run_query(q)

    async def release_upload_hashed(
        self, upload_id: str, lease: str, size: int, state: HashState
    ) -> bool:
        """release_upload, saving the session's running hash (of `size` bytes) in the
        same transaction, so the two never disagree."""

        def w(conn: Connection) -> bool:
            params = {
                "upload_id": upload_id,
                "held": lease,
                "new_size": size,
                "now": self.clock.now(),
            }
            if conn.execute(self._upload_sql.release, params).rowcount == 0:
                return False
            conn.execute(
                self._hash_sql.put,
                {
                    "upload_id": upload_id,
                    "algorithm": state.algorithm,
                    "kind": state.kind,
                    "size": state.size,
                    "state": state.state,
                },
            )
            return True

        return await self.run_write(w)
