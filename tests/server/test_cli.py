"""`regd` as an operator meets it: help, version, and everyday start-up failures.

Each failure must be one line on stderr naming the address or path and the cause, a
non-zero exit, no traceback, and no "serving" log line before the socket is bound.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers.servers import free_port

pytestmark = pytest.mark.e2e

TIMEOUT = 60


def regd(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGD_")}
    env["COLUMNS"] = "200"
    prefix: list[str] = []
    if unprivileged and os.geteuid() == 0:
        # root writes anywhere; what matters is the user regd runs as.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop privileges")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run(
        [*prefix, sys.executable, "-m", "regd", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd="/",
    )


def one_line_failure(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    err = done.stderr.strip()
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    assert "serving" not in done.stderr, done.stderr
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def serve_args(data_dir: Path | str, *extra: str) -> Sequence[str]:
    return ("serve", "--addr", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir), *extra)


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = regd("serve", "--addr", f"127.0.0.1:{port}", "--data-dir", str(tmp_path))
    one_line_failure(done, f"127.0.0.1:{port}", "Address already in use")


def test_postgresql_unreachable(tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/x"
    done = regd(*serve_args(tmp_path, "--database", url))
    one_line_failure(done, url, "Connection refused")


def test_password_is_not_shown(tmp_path: Path) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/x"
    err = one_line_failure(regd(*serve_args(tmp_path, "--database", url)))
    assert "s3cret" not in err


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user may enter (pytest's tmp_path is private)."""
    path = Path(tempfile.mkdtemp(prefix="regd-cli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_read_only_data_dir(shared_dir: Path) -> None:
    data = shared_dir / "data"
    data.mkdir()
    data.chmod(0o555)
    done = regd(*serve_args(data), unprivileged=True)
    one_line_failure(done, str(data), "Permission denied")


@pytest.mark.parametrize("where", ["/proc/regd-test/data", "/sys/regd-test"])
def test_data_dir_the_kernel_refuses(where: str) -> None:
    done = regd(*serve_args(where))
    one_line_failure(done, where)


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "data"
    file.write_text("")
    one_line_failure(regd(*serve_args(file)), str(file), "File exists")


def test_invalid_port_is_named() -> None:
    err = one_line_failure(regd("serve", "--addr", "127.0.0.1:99999"), "99999")
    assert "invalid port" in err


def test_help_and_version() -> None:
    for flag in ("-h", "--help"):
        done = regd(flag)
        assert done.returncode == 0, done.stderr
        assert "serve" in done.stdout
    version = regd("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == regd("version").stdout.strip() != ""
    serve_help = regd("serve", "-h")
    assert serve_help.returncode == 0, serve_help.stderr
    for text in ("default: 127.0.0.1:5000", "env: REGD_ADDR", "env: REGD_BODY_TIMEOUT"):
        assert text in serve_help.stdout, serve_help.stdout
