"""Fixtures shared by the whole suite.

Databases: `pg_url` is one PostgreSQL database for a whole session; `database_url` runs a test
twice, once on regd's embedded default (SQLite, yielded as None) and once on a PostgreSQL
database created for that test alone and dropped after it. Creating a database takes a few
tens of milliseconds here, so per-test databases buy full isolation at little cost.

In-process: `registry` is a Registry over a temporary directory and `database_url`;
`client` is an httpx client driving the real app over it through httpx's ASGI transport
(tests/helpers/inprocess.py has the helpers that push through it). The e2e and regctl
suites have a `registry` of their own: a server process.

Servers: `regd_server` is a real `regd serve` process on a free loopback port with its own
data directory; `regd_factory` starts more of them (several workers, two processes sharing
one data directory and database, ...); `distribution` is the reference registry.

Set REGD_TEST_PG to use another PostgreSQL server, or REGD_TEST_NO_PG=1 to skip the
PostgreSQL cases when no server is available (otherwise they fail).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from regd.app import create_app
from regd.clock import ManualClock
from regd.config import Config
from regd.metadata import MetadataStore, sqlite_url
from regd.registry import Registry
from regd.storage import FilesystemDriver
from tests.helpers.pg import Databases, PostgresUnavailable
from tests.helpers.reference import require_distribution
from tests.helpers.servers import (
    DistributionServer,
    RegdFactory,
    RegdServer,
    ServerProcess,
    ServerStartError,
)
from tests.helpers.store import metadata_store

DATABASE_KINDS = ["sqlite", "postgresql"]


def _no_pg() -> bool:
    return os.environ.get("REGD_TEST_NO_PG", "") not in ("", "0")


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[Databases]:
    """A connection to the PostgreSQL server that creates and drops test databases."""
    databases: Databases | None = None
    try:
        databases = Databases()
    except PostgresUnavailable as exc:
        problem = str(exc)
    if databases is None:
        if _no_pg():
            pytest.skip(f"REGD_TEST_NO_PG is set and {problem}".splitlines()[0])
        pytest.fail(problem, pytrace=False)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(scope="session")
def pg_url(pg_databases: Databases) -> Iterator[str]:
    """One fresh PostgreSQL database for the whole session."""
    url = pg_databases.create()
    yield url
    pg_databases.drop(url)


@pytest.fixture
def fresh_pg_url(pg_databases: Databases) -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    url = pg_databases.create()
    yield url
    pg_databases.drop(url)


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None for regd's embedded SQLite default, else a PostgreSQL URL of a fresh database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("fresh_pg_url")
    return url


@pytest.fixture
def clock() -> ManualClock:
    """Wall-clock time that moves only when a test advances it."""
    return ManualClock()


@pytest.fixture
async def store(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> AsyncIterator[MetadataStore]:
    """A metadata store with its schema, on each backend, on the test's `clock`."""
    async with metadata_store(database_url, tmp_path, clock=clock) as s:
        yield s


@pytest.fixture
async def registry(tmp_path: Path, database_url: str | None) -> AsyncIterator[Registry]:
    store = MetadataStore(database_url or sqlite_url(tmp_path / "regd.db"))
    store.create_schema()
    reg = Registry.create(FilesystemDriver(tmp_path / "blobs"), store)
    yield reg
    await reg.aclose()


@pytest.fixture
async def client(registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(registry, Config(access_log=False, upload_purge_interval=0))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as c:
        yield c


def _start_or_fail(server: ServerProcess) -> None:
    try:
        server.start()
    except ServerStartError as exc:
        message = str(exc)
    else:
        return
    # Outside the except block, so the report is the server's output and nothing else.
    pytest.fail(message, pytrace=False)


@pytest.fixture
def regd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegdFactory]:
    """Start regd processes; every one is stopped at teardown.

    Call it as `regd_factory(database_url=..., data_dir=..., workers=..., extra_args=[...],
    env={...})`. Two calls with the same `data_dir` and `database_url` give two processes over
    one registry.
    """
    servers: list[RegdServer] = []

    def start(
        *,
        database_url: str | None = None,
        data_dir: Path | None = None,
        **options: Any,
    ) -> RegdServer:
        scratch = tmp_path_factory.mktemp("regd")
        server = RegdServer(
            data_dir=data_dir or scratch / "data",
            database_url=database_url,
            scratch=scratch,
            **options,
        )
        servers.append(server)
        _start_or_fail(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def regd_server(regd_factory: RegdFactory, database_url: str | None) -> RegdServer:
    """A running regd, once per database kind."""
    return regd_factory(database_url=database_url)


@pytest.fixture
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionServer]:
    """The reference registry (Distribution 2.8) on a free port with an empty storage root."""
    require_distribution()
    scratch = tmp_path_factory.mktemp("distribution")
    server = DistributionServer(root=scratch / "root", scratch=scratch)
    _start_or_fail(server)
    yield server
    server.stop()
