"""Fixtures for regctl's tests: real registries on loopback ports, and the CLI in-process.

`registry_server` runs a test once against Distribution (the reference registry) and once against
regd; `registry_pair` gives (source, destination) across the two kinds for copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from regctl.main import main
from tests.helpers.reference import require_distribution
from tests.helpers.servers import (
    DistributionServer,
    RegdServer,
    ServerProcess,
    ServerStartError,
)
from tests.regctl.support import CliResult, start_auth_distribution


def _start_distribution(scratch: Path) -> DistributionServer:
    require_distribution()
    server = DistributionServer(root=scratch / "root", scratch=scratch)
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture
def distribution_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DistributionServer]:
    server = _start_distribution(tmp_path_factory.mktemp("distribution"))
    yield server
    server.stop()


@pytest.fixture
def second_distribution(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DistributionServer]:
    server = _start_distribution(tmp_path_factory.mktemp("distribution"))
    yield server
    server.stop()


@pytest.fixture
def regd_registry(regd_factory: Callable[..., RegdServer]) -> RegdServer:
    return regd_factory(database_url=None)


@pytest.fixture(params=["distribution", "regd"])
def registry_server(request: pytest.FixtureRequest) -> ServerProcess:
    server: ServerProcess = request.getfixturevalue(f"{request.param}_registry")
    return server


@pytest.fixture(
    params=[
        ("distribution_registry", "second_distribution"),
        ("distribution_registry", "regd_registry"),
        ("regd_registry", "distribution_registry"),
    ],
    ids=["distribution-to-distribution", "distribution-to-regd", "regd-to-distribution"],
)
def registry_pair(request: pytest.FixtureRequest) -> tuple[ServerProcess, ServerProcess]:
    source, destination = request.param
    return request.getfixturevalue(source), request.getfixturevalue(destination)


@pytest.fixture
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionServer]:
    """Distribution with htpasswd (Basic) auth: user alice, password right-password."""
    require_distribution()
    server = start_auth_distribution(tmp_path_factory.mktemp("auth-distribution"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the developer's own credentials or daemon state."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("REGD_DATA_DIR", str(tmp_path / "regd-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("REGCTL_REGISTRY", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run regctl's `main()` in-process, as the console script would."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
