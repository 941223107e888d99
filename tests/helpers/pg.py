"""Throw-away PostgreSQL databases for tests.

Every database this module creates is named `regd_test_<hex>` so a crashed run's leftovers are
easy to recognise and drop by hand.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import psycopg

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class PostgresUnavailable(RuntimeError):
    pass


def admin_url() -> str:
    return os.environ.get("REGD_TEST_PG", DEFAULT_ADMIN_URL)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


class Databases:
    """Creates databases on one server and drops them all again at `close`."""

    def __init__(self, url: str | None = None) -> None:
        self.admin_url = url or admin_url()
        self._created: list[str] = []
        try:
            self._conn = psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise PostgresUnavailable(
                f"cannot connect to PostgreSQL at {self.admin_url}: {exc}\n"
                "Start it with `scripts/setup --with-postgres`, point REGD_TEST_PG at another "
                "server, or set REGD_TEST_NO_PG=1 to skip the PostgreSQL tests."
            ) from exc

    def create(self) -> str:
        name = f"regd_test_{secrets.token_hex(6)}"
        # The name is generated above from hex digits only, so quoting it is enough.
        self._conn.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return _with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        if name in self._created:
            self._created.remove(name)
            self._conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        try:
            for name in list(self._created):
                self._conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self._created.clear()
        finally:
            self._conn.close()
