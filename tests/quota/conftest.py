"""Fixtures for quotas and maintenance mode: regd processes (one per module and database kind
where the tests can share it), and regctl's fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.pg import Databases
from tests.helpers.servers import RegdServer, ServerStartError
from tests.regctl.conftest import _isolated_environment, cli
from tests.regctl.support import CliResult

Cli = Callable[..., CliResult]


# regctl's own isolation from the developer's credentials and daemon state (autouse), and
# regctl run in-process, as its tests use them.
__all__ = ["_isolated_environment", "cli"]


def start_regd(server: RegdServer) -> RegdServer:
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def module_database(request: pytest.FixtureRequest, database_kind: str) -> Iterator[str | None]:
    """None (SQLite in the data dir), or a PostgreSQL database made for the module."""
    if database_kind == "sqlite":
        yield None
        return
    databases: Databases = request.getfixturevalue("pg_databases")
    url = databases.create()
    yield url
    databases.drop(url)


def regd_env(**settings: Any) -> dict[str, str]:
    """REGD_* variables for `settings` (lists as JSON)."""
    return {
        f"REGD_{key.upper()}": json.dumps(value) if isinstance(value, list) else str(value)
        for key, value in settings.items()
    }


def stored_files(data_dir: Path) -> dict[Path, int]:
    """Every file under the storage root (blobs and upload sessions) with its size."""
    root = data_dir / "docker" / "registry" / "v2"
    return {p.relative_to(root): p.stat().st_size for p in root.rglob("*") if p.is_file()}
