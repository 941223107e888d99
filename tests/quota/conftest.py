"""Fixtures for quotas and maintenance mode: regd processes (one per module and database kind
where the tests can share it) and regctl run in-process."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from regctl.main import main
from tests.helpers.pg import Databases
from tests.helpers.servers import RegdServer, ServerStartError
from tests.regctl.support import CliResult

Cli = Callable[..., CliResult]


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """regctl must never read the developer's own credentials or daemon state."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("REGD_DATA_DIR", str(tmp_path / "regd-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("REGCTL_REGISTRY", raising=False)
    monkeypatch.delenv("REGCTL_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """regctl's `main()` in-process, as the console script runs it."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


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


def stored_files(data_dir: Path) -> set[Path]:
    """Every file under the storage root: blobs and upload sessions."""
    root = data_dir / "docker" / "registry" / "v2"
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()} if root.exists() else set()
