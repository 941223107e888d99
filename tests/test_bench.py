"""The benchmark scripts: each one a person runs prints its help without starting anything,
and the pieces the replica benchmark adds do what its numbers rely on.

The scripts are found by walking bench/ for a `__main__` block, so a new script is covered
without touching this file.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import pytest

from bench import oci
from bench.httpc import Body, Connection, Response

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(
    path.relative_to(ROOT).as_posix()
    for path in (ROOT / "bench").glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)


def test_the_scripts_are_found() -> None:
    # A glob that found nothing would make the help tests vacuous.
    assert {"bench/run.py", "bench/replicas.py", "bench/stream_rss.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout[:200]


def test_replicas_help_names_its_options() -> None:
    result = subprocess.run(
        [sys.executable, "bench/replicas.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for option in ("--size-mib", "--rounds", "--clients", "--seconds", "--workers", "--only"):
        assert option in result.stdout


@pytest.mark.parametrize(
    "argv", [["--size-mib", "0"], ["--rounds", "0"], ["--seconds", "0"], ["--only", "bogus"]]
)
def test_replicas_refuses_nonsense(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "bench/replicas.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr


def test_replicas_says_in_one_line_when_postgresql_is_missing() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # Bound but not listening: nothing answers there.
        result = subprocess.run(
            [
                sys.executable,
                "bench/replicas.py",
                "--pg-admin",
                f"postgresql://nobody@127.0.0.1:{port}/postgres",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "400"},
            check=False,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "cannot start" in line]
    assert len(lines) == 1, result.stdout
    assert "cannot connect to PostgreSQL" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


class FakeReplica:
    """Answers a chunked upload as a registry would, and records what it was sent."""

    def __init__(self, name: str, log: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.log = log

    def request(
        self, method: str, target: str, headers: Mapping[str, str] | None = None, body: Body = b""
    ) -> Response:
        self.log.append((self.name, method, target))
        if method == "POST":
            return Response(202, {"location": "/v2/r/blobs/uploads/u1"})
        if method == "PATCH":
            return Response(202, {"location": "/v2/r/blobs/uploads/u1"})
        return Response(201)


def test_chunked_push_sends_each_request_to_the_next_replica() -> None:
    log: list[tuple[str, str, str]] = []
    replicas = [FakeReplica(name, log) for name in "ABC"]
    data = bytes(10)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    timings: dict[str, list[float]] = {}

    turns = itertools.cycle(cast(list[Connection], replicas))
    requests = oci.push_blob_chunked_over(turns, "r", data, digest, 3, timings)

    # POST, four PATCHes of 3, 3, 3 and 1 bytes, PUT: six requests, A B C A B C.
    assert requests == 6
    assert [name for name, _, _ in log] == list("ABCABC")
    assert [method for _, method, _ in log] == ["POST", *["PATCH"] * 4, "PUT"]
    assert log[-1][2].endswith("?digest=" + digest.replace(":", "%3A"))
    assert {k: len(v) for k, v in timings.items()} == {"POST": 1, "PATCH": 4, "PUT": 1}
