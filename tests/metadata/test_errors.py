"""What a caller of the store sees when something fails: a MetadataError when the
database did, and a mistake in regd's own code as it was raised."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection

from regd.metadata import MetadataError, MetadataStore
from regd.metadata.batching import Retry


class Mistake(RuntimeError):
    """A bug, not a database failure."""


async def test_a_mistake_in_a_write_is_not_a_database_error(store: MetadataStore) -> None:
    def w(conn: Connection) -> None:
        raise Mistake("a bug")

    with pytest.raises(Mistake):
        await store.run_write(w)

    def typo(conn: Connection) -> None:
        {}["missing"]

    with pytest.raises(KeyError):
        await store.run_write(typo)


async def test_a_driver_error_in_a_write_is_a_metadata_error(store: MetadataStore) -> None:
    def w(conn: Connection) -> None:
        # Straight on the driver's cursor, as listings read: its own exception, unwrapped.
        driver = conn.connection.dbapi_connection
        assert driver is not None
        driver.cursor().execute("SELECT * FROM no_such_table")

    with pytest.raises(MetadataError, match="no_such_table"):
        await store.run_write(w)
    assert await store.acquire_lock("still", "works", 60)


async def test_a_write_that_never_settles_gives_up(store: MetadataStore) -> None:
    def w(conn: Connection) -> None:
        raise Retry()

    with pytest.raises(MetadataError, match="stayed busy"):
        await store.run_write(w)
