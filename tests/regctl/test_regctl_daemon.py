"""regctl start / stop / status / logs driving a real `regd serve` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from regd import __version__
from regd.client import RegistryClient
from tests.helpers.servers import RegdServer, ServerProcess, free_port
from tests.regctl import support as content
from tests.regctl.support import CliResult

pytestmark = pytest.mark.e2e


def regctl(*args: str, timeout: float = 60) -> CliResult:
    done = subprocess.run(
        [sys.executable, "-m", "regctl.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "regd-data"
    yield directory
    # Whatever a failing test left running goes.
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int((directory / "regd.pid").read_text())
        os.killpg(pid, signal.SIGKILL)


def test_lifecycle(
    data_dir: Path, distribution_registry: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    data_dir.mkdir(parents=True)
    (data_dir / "regd.pid").write_text(f"{dead_pid()}\n")

    not_running = regctl("status", "--data-dir", str(data_dir), "--json")
    assert not_running.code == 1
    assert json.loads(not_running.out)["running"] is False

    started = regctl("start", "--addr", f"127.0.0.1:{port}", "--data-dir", str(data_dir))
    assert started.code == 0, started
    assert started.out.strip() == f"http://127.0.0.1:{port}"
    assert "stale pid file" in started.err
    pid = int((data_dir / "regd.pid").read_text())

    again = regctl("start", "--addr", f"127.0.0.1:{port}", "--data-dir", str(data_dir))
    assert again.code == 0
    assert f"already running (pid {pid})" in again.out

    async def push() -> None:
        async with RegistryClient() as client:
            await content.push_image(client, distribution_registry.host, "app", "v1")

    trio.run(push)
    # Host-less references go to the daemon `regctl start` remembered.
    monkeypatch.setenv("REGD_DATA_DIR", str(data_dir))
    copied = regctl("copy", f"{distribution_registry.host}/app:v1", "mirror/app")
    assert copied.code == 0, copied
    assert regctl("ls", "-q").out.split() == ["mirror/app"]

    status = regctl("status", "--json")
    assert status.code == 0, status
    info = json.loads(status.out)
    assert info["running"] is True
    assert info["pid"] == pid
    assert info["url"] == f"http://127.0.0.1:{port}"
    assert info["repositories"] == 1
    assert isinstance(info["storedBytes"], int)
    assert info["storedBytes"] > 0
    assert info["uptimeSeconds"] >= 0
    assert info["dataDir"] == str(data_dir)
    assert 0 < info["freeBytes"] <= info["volumeBytes"]
    human = regctl("status")
    assert "running" in human.out
    assert str(pid) in human.out
    assert "free space:" in human.out

    assert regctl("logs").code == 0
    assert regctl("logs", "--tail", "1").out.count("\n") <= 1

    stopped = regctl("stop")
    assert stopped.code == 0, stopped
    assert stopped.out.strip() == f"regd (pid {pid}) stopped"
    assert not (data_dir / "regd.pid").exists()
    assert regctl("status").code == 1
    nothing = regctl("stop")
    assert nothing.code == 0
    assert nothing.out.strip() == "regd is not running"


def test_start_on_a_port_in_use(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = regctl("start", "--addr", f"127.0.0.1:{port}", "--data-dir", str(data_dir))
    assert result.code == 1
    assert result.err.strip() == (
        f"regctl: error: cannot start regd: 127.0.0.1:{port} is already in use by another process"
    )
    assert not (data_dir / "regd.pid").exists()


def test_start_reports_a_daemon_that_dies(data_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("this is [not toml\n")
    port = free_port()
    result = regctl(
        "start", "--addr", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--config", str(broken)
    )
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("regctl: error: regd exited with status")
    assert "regd.log" in lines[0]
    assert not (data_dir / "regd.pid").exists()


def test_bad_addresses_and_missing_log(data_dir: Path) -> None:
    bad = regctl("start", "--addr", "nonsense", "--data-dir", str(data_dir))
    assert bad.code == 1
    assert "invalid address 'nonsense'" in bad.err
    logs = regctl("logs", "--data-dir", str(data_dir))
    assert logs.code == 1
    assert "no log file" in logs.err


def test_host_less_commands_find_a_daemon_started_with_data_dir(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing tells later commands where the data lives: they must find it themselves.
    monkeypatch.delenv("REGD_DATA_DIR")
    port = free_port()
    started = regctl("start", "--addr", f"127.0.0.1:{port}", "--data-dir", str(data_dir))
    assert started.code == 0, started
    pid = int((data_dir / "regd.pid").read_text())

    async def push() -> None:
        async with RegistryClient() as client:
            await content.push_image(client, f"127.0.0.1:{port}", "found/app", "v1")

    trio.run(push)
    listed = regctl("ls", "-q")
    assert listed.code == 0, listed
    assert listed.out.split() == ["found/app"]
    assert regctl("digest", "found/app:v1").code == 0
    status = regctl("status", "--json")
    assert status.code == 0, status
    info = json.loads(status.out)
    assert (info["pid"], info["url"], info["startedByRegctl"]) == (
        pid,
        f"http://127.0.0.1:{port}",
        True,
    )
    stopped = regctl("stop")
    assert stopped.out.strip() == f"regd (pid {pid}) stopped", stopped


def test_status_reads_regds_status_not_its_usage(
    regd_factory: Callable[..., RegdServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Usage reads every row of the metadata: too heavy for a command run to take a look.
    server = regd_factory(log_level="info", env={"REGD_ACCESS_LOG": "1"})
    monkeypatch.setenv("REGCTL_REGISTRY", server.host)
    for args in (("status",), ("status", "--json")):
        assert regctl(*args).code == 0
    log = server.output()
    assert log.count("/admin/v1/status") == 2, log
    assert "/admin/v1/usage" not in log, log


def test_status_reports_a_regd_it_did_not_start(
    regd_factory: Callable[..., RegdServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = regd_factory()
    monkeypatch.setenv("REGCTL_REGISTRY", server.host)
    human = regctl("status")
    assert human.code == 0, human
    assert f"regd at http://{server.host} (not started by regctl)" in human.out
    info = json.loads(regctl("status", "--json").out)
    assert info["running"] is True
    assert info["startedByRegctl"] is False
    assert info["pid"] is None
    assert info["repositories"] == 0
    assert info["version"] == __version__
    assert info["storageDriver"] == "filesystem"
    assert info["database"] == "sqlite"
    assert info["collectionRunning"] is False
    assert info["serverUptimeSeconds"] >= 0
    assert info["workers"] == 1  # the fixture's (tests.helpers.servers.RegdServer)
    for line in ("version:", "workers:", "storage:", "database:", "collection:"):
        assert line in human.out, human.out
    # An address where nothing answers is still "not running".
    monkeypatch.setenv("REGCTL_REGISTRY", f"127.0.0.1:{free_port()}")
    assert regctl("status").code == 1
