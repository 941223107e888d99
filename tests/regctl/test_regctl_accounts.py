"""regctl user, token and audit against a real `regd serve` with authentication on.

The server has an admin_token and the default access rules (every account may use every
repository; the `admin` group holds the admin right), given as `[[access]]` rules so that
authentication is on from the first start.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from regd.auth.wiring import DEFAULT_ACCESS
from tests.helpers.clients import Skopeo
from tests.helpers.oci import LayoutImage, build_image, machine_files
from tests.helpers.servers import RegdFactory, RegdServer
from tests.regctl.support import CliResult

pytestmark = pytest.mark.e2e

Cli = Callable[..., CliResult]
ADMIN_TOKEN = "admin-token-for-the-regctl-tests"


@pytest.fixture
def server(regd_factory: RegdFactory, database_url: str | None) -> RegdServer:
    return regd_factory(
        database_url=database_url,
        env={"REGD_ADMIN_TOKEN": ADMIN_TOKEN, "REGD_ACCESS": json.dumps(list(DEFAULT_ACCESS))},
    )


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGCTL_ADMIN_TOKEN", ADMIN_TOKEN)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    scratch = tmp_path_factory.mktemp("accounts-image")
    return build_image(
        scratch / "layout", "v1", files=machine_files(scratch / "files", unique=b"accounts")
    )


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def _one_line(result: CliResult) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


def _can_log_in(server: RegdServer, user: str, password: str) -> bool:
    r = httpx.get(
        f"{server.url}/auth/token",
        params={"service": "regd", "scope": "repository:x/y:pull"},
        auth=(user, password),
    )
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def _access_token(server: RegdServer, user: str, password: str) -> str:
    r = httpx.get(
        f"{server.url}/auth/token",
        params={"service": "regd", "scope": "repository:x/y:pull"},
        auth=(user, password),
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def _token_works(server: RegdServer, token: str) -> bool:
    r = httpx.get(f"{server.url}/v2/", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def _add(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, host: str, name: str, password: str, *extra: str
) -> CliResult:
    _stdin(monkeypatch, password + "\n")
    return cli("user", "add", name, "--password-stdin", "-r", host, *extra)


def _login(cli: Cli, monkeypatch: pytest.MonkeyPatch, host: str, name: str, pw: str) -> None:
    _stdin(monkeypatch, pw + "\n")
    result = cli("login", host, "-u", name, "--password-stdin", "-q")
    assert result.code == 0, result.err


def test_user_cycle(server: RegdServer, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    host = server.host
    monkeypatch.setenv("REGCTL_ADMIN_TOKEN", ADMIN_TOKEN)
    added = _add(cli, monkeypatch, host, "root", "root-password", "--group", "admin")
    assert added.code == 0, added.err
    assert f"added user root in admin to {host}" in added.out
    assert "next starts" not in added.out  # authentication is on already
    assert _add(cli, monkeypatch, host, "alice", "alice-password").code == 0

    again = _add(cli, monkeypatch, host, "root", "another-password")
    assert again.code == 1
    assert _one_line(again) == f"regctl: error: user root already exists on {host}"

    listed = cli("user", "ls", "-r", host, "--json")
    assert listed.code == 0, listed.err
    users = {u["name"]: u for u in listed.json()}
    assert set(users) == {"root", "alice"}
    assert users["root"]["groups"] == ["admin"]
    assert users["alice"]["created"].endswith("Z")
    table = cli("user", "ls", "-r", host)
    assert table.out.splitlines()[0].split() == ["NAME", "GROUPS", "SOURCE", "CREATED", "STATE"]

    # Without the admin token: an account with the admin right, saved by `regctl login`.
    monkeypatch.delenv("REGCTL_ADMIN_TOKEN")
    nobody = cli("user", "ls", "-r", host)
    assert nobody.code == 1
    line = _one_line(nobody)
    assert f"{host} needs admin credentials" in line
    assert "--admin-token" in line
    assert "REGCTL_ADMIN_TOKEN" in line
    assert f"regctl login {host}" in line
    _login(cli, monkeypatch, host, "alice", "alice-password")
    refused = cli("user", "ls", "-r", host)
    assert refused.code == 1
    assert "alice does not have the admin right (HTTP 403)" in _one_line(refused)
    _login(cli, monkeypatch, host, "root", "root-password")
    assert cli("user", "ls", "-r", host).code == 0

    _stdin(monkeypatch, "alice-new-password\n")
    changed = cli("user", "passwd", "alice", "--password-stdin", "-r", host)
    assert changed.code == 0, changed.err
    assert not _can_log_in(server, "alice", "alice-password")
    assert _can_log_in(server, "alice", "alice-new-password")

    grouped = cli("user", "groups", "alice", "dev", "ops", "-r", host)
    assert grouped.code == 0, grouped.err
    assert grouped.out.strip() == f"alice on {host} is in dev, ops"
    users = {u["name"]: u for u in cli("user", "ls", "-r", host, "--json").json()}
    assert users["alice"]["groups"] == ["dev", "ops"]

    for command in (["groups", "ghost", "dev"], ["rm", "ghost", "--yes"]):
        unknown = cli("user", *command, "-r", host)
        assert unknown.code == 1
        assert _one_line(unknown) == f"regctl: error: user ghost is not known to {host}"
    _stdin(monkeypatch, "pw\n")
    unknown = cli("user", "passwd", "ghost", "--password-stdin", "-r", host)
    assert _one_line(unknown) == f"regctl: error: user ghost is not known to {host}"

    unconfirmed = cli("user", "rm", "alice", "-r", host)
    assert unconfirmed.code == 2
    assert "--yes" in _one_line(unconfirmed)
    removed = cli("user", "rm", "alice", "--yes", "-r", host)
    assert removed.code == 0, removed.err
    assert not _can_log_in(server, "alice", "alice-new-password")
    users = {u["name"] for u in cli("user", "ls", "-r", host, "--json").json()}
    assert users == {"root"}


def test_disable_and_enable(
    server: RegdServer, cli: Cli, admin_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = server.host
    assert _add(cli, monkeypatch, host, "alice", "alice-password").code == 0
    held = _access_token(server, "alice", "alice-password")
    assert _token_works(server, held)

    disabled = cli("user", "disable", "alice", "-r", host)
    assert disabled.code == 0, disabled.err
    assert disabled.out.strip() == f"disabled user alice on {host}"
    assert not _can_log_in(server, "alice", "alice-password")
    assert not _token_works(server, held)
    users = {u["name"]: u for u in cli("user", "ls", "-r", host, "--json").json()}
    assert users["alice"]["disabled"] is True
    table = cli("user", "ls", "-r", host).out.splitlines()
    assert [line.split()[-1] for line in table if line.startswith("alice ")] == ["disabled"]

    enabled = cli("user", "enable", "alice", "-r", host)
    assert enabled.code == 0, enabled.err
    assert enabled.out.strip() == f"enabled user alice on {host}"
    assert _can_log_in(server, "alice", "alice-password")
    # What it held before stays refused: its clients log in anew.
    assert not _token_works(server, held)
    users = {u["name"]: u for u in cli("user", "ls", "-r", host, "--json").json()}
    assert users["alice"]["disabled"] is False

    for command in ("disable", "enable"):
        unknown = cli("user", command, "ghost", "-r", host)
        assert unknown.code == 1
        assert _one_line(unknown) == f"regctl: error: user ghost is not known to {host}"
        unreachable = cli("user", command, "alice", "-r", "127.0.0.1:1")
        assert unreachable.code == 1
        line = _one_line(unreachable)
        assert line.startswith("regctl: error: ")
        assert "127.0.0.1:1" in line
        assert "connection refused" in line.lower()


def test_machine_token_pushes_until_removed_and_audit_names_it(
    server: RegdServer,
    cli: Cli,
    admin_env: None,
    monkeypatch: pytest.MonkeyPatch,
    image: LayoutImage,
    tmp_path: Path,
) -> None:
    host = server.host
    assert _add(cli, monkeypatch, host, "alice", "alice-password").code == 0
    created = cli(
        "token",
        "create",
        "--name",
        "ci",
        "--scope",
        "repository:team/*:pull,push",
        "--expires",
        "90d",
        "--owner",
        "alice",
        "-r",
        host,
    )
    assert created.code == 0, created.err
    secret = next(line for line in created.out.splitlines() if line.startswith("regd_"))
    assert f"podman login -u ci --password-stdin {host}" in created.out
    assert "shown this once" in created.out

    tokens = cli("token", "ls", "-r", host, "--json").json()
    assert [(t["name"], t["owner"], t["state"]) for t in tokens] == [("ci", "alice", "active")]
    assert tokens[0]["scopes"] == ["repository:team/*:pull,push"]
    assert "secret" not in tokens[0]
    assert tokens[0]["expires"].endswith("Z")
    token_id = tokens[0]["id"]

    skopeo = Skopeo(tmp_path / "skopeo")
    skopeo.copy(image.ref, f"docker://{host}/team/app:v1", "--dest-creds", f"ci:{secret}")
    # The token's scopes bound it, even where its owner could push.
    with pytest.raises(AssertionError, match=r"(?i)403|forbidden|denied"):
        skopeo.copy(image.ref, f"docker://{host}/other/app:v1", "--dest-creds", f"ci:{secret}")

    records = cli("audit", "team/app", "-r", host, "--json")
    assert records.code == 0, records.err
    pushes = [r for r in records.json() if r["action"] == "push"]
    assert pushes, records.out
    assert pushes[0]["actor"] == f"alice (token {token_id})"
    assert pushes[0]["repository"] == "team/app"
    assert pushes[0]["outcome"] == "success"
    assert pushes[0]["time"].endswith("Z")
    assert pushes[0]["remote_addr"] == "127.0.0.1"
    table = cli("audit", f"{host}/team/app")
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == [
        "TIME",
        "ACTOR",
        "ACTION",
        "REPOSITORY",
        "REFERENCE",
        "FROM",
        "OUTCOME",
    ]
    assert any("alice (token" in row and " push " in row for row in rows), table.out
    # --since: an age, and an ISO time after every record.
    assert cli("audit", "-r", host, "--since", "1h", "--json").json()
    assert cli("audit", "-r", host, "--since", "2999-01-01T00:00:00Z", "--json").json() == []
    bad_since = cli("audit", "-r", host, "--since", "yesterday")
    assert bad_since.code == 2
    assert "neither an age" in _one_line(bad_since)

    revoked = cli("token", "rm", token_id, "-r", host)
    assert revoked.code == 0, revoked.err
    with pytest.raises(AssertionError, match=r"(?i)401|unauthorized"):
        skopeo.copy(image.ref, f"docker://{host}/team/app:v2", "--dest-creds", f"ci:{secret}")
    tokens = cli("token", "ls", "-r", host, "--owner", "alice", "--json").json()
    assert [t["state"] for t in tokens] == ["revoked"]
    again = cli("token", "rm", token_id, "-r", host)
    assert again.code == 1
    assert "is not known to" in _one_line(again)


def test_token_owner_defaults_to_the_logged_in_account(
    server: RegdServer, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = server.host
    monkeypatch.setenv("REGCTL_ADMIN_TOKEN", ADMIN_TOKEN)
    assert _add(cli, monkeypatch, host, "root", "root-password", "-g", "admin").code == 0
    orphan = cli("token", "create", "--name", "ci", "--scope", "repository:a:pull", "-r", host)
    assert orphan.code == 2
    assert "--owner is needed" in _one_line(orphan)
    unknown = cli(
        "token",
        "create",
        "--name",
        "ci",
        "--scope",
        "repository:a:pull",
        "--owner",
        "ghost",
        "-r",
        host,
    )
    assert unknown.code == 1
    monkeypatch.delenv("REGCTL_ADMIN_TOKEN")
    _login(cli, monkeypatch, host, "root", "root-password")
    secret = cli(
        "token", "create", "--name", "ci", "--scope", "repository:a:pull", "-q", "-r", host
    )
    assert secret.code == 0, secret.err
    assert secret.out.startswith("regd_")
    assert len(secret.out.strip().splitlines()) == 1
    listed = cli("token", "ls", "-r", host, "--json").json()
    assert [(t["owner"], t["expires"]) for t in listed] == [("root", None)]
    bad_scope = cli(
        "token", "create", "--name", "ci2", "--scope", "nonsense", "-r", host, "--owner", "root"
    )
    assert bad_scope.code == 1
    assert _one_line(bad_scope).startswith(f"regctl: error: {host}: ")


def test_a_bad_admin_token_is_refused_even_with_admin_credentials_saved(
    server: RegdServer, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = server.host
    monkeypatch.setenv("REGCTL_ADMIN_TOKEN", ADMIN_TOKEN)
    assert _add(cli, monkeypatch, host, "root", "root-password", "-g", "admin").code == 0
    _login(cli, monkeypatch, host, "root", "root-password")
    # The token given is what is checked: saved credentials never stand in for it.
    bad = cli("user", "ls", "-r", host, "--admin-token", "not-the-admin-token")
    assert bad.code == 1
    line = _one_line(bad)
    assert line.startswith(f"regctl: error: {host} refused the admin token (HTTP 401)")
    assert "--admin-token" in line


def test_passwords_never_come_from_the_command_line(
    server: RegdServer, cli: Cli, admin_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = server.host
    for command in ("add", "passwd"):
        refused = cli("user", command, "bob", "--password", "bob-password", "-r", host)
        assert refused.code == 2
        assert "No such option: --password" in _one_line(refused)
    _stdin(monkeypatch, "")
    empty = cli("user", "add", "bob", "--password-stdin", "-r", host)
    assert empty.code == 1
    assert _one_line(empty) == "regctl: error: standard input held no password (--password-stdin)"
    _stdin(monkeypatch, "\n")
    assert cli("user", "add", "bob", "--password-stdin", "-r", host).code == 1
    # Not a terminal, so nothing to type a hidden password into.
    _stdin(monkeypatch, "bob-password\n")
    untyped = cli("user", "add", "bob", "-r", host)
    assert untyped.code == 1
    assert "--password-stdin" in _one_line(untyped)
    # Too long for bcrypt: the server's own message.
    long = _add(cli, monkeypatch, host, "bob", "x" * 100)
    assert long.code == 1
    assert "longer than" in _one_line(long)
    assert cli("user", "ls", "-r", host, "--json").json() == []


def test_the_first_account_asks_for_a_restart(
    regd_factory: RegdFactory, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = regd_factory(database_url=None)
    added = _add(cli, monkeypatch, server.host, "root", "root-password", "-g", "admin")
    assert added.code == 0, added.err
    assert "accounts take effect when it next starts" in added.out
    assert httpx.get(f"{server.url}/v2/").status_code == 200
    server.stop()
    server.start()
    assert httpx.get(f"{server.url}/v2/").status_code == 401
    _login(cli, monkeypatch, server.host, "root", "root-password")
    listed = cli("user", "ls", "-r", server.host, "--json")
    assert listed.code == 0, listed.err
    assert [u["name"] for u in listed.json()] == ["root"]


def test_the_password_prompt_asks_twice_on_a_terminal(server: RegdServer, tmp_path: Path) -> None:
    """The hidden prompt, typed at a real terminal (a pseudo-terminal) by a real process."""
    leader, follower = pty.openpty()
    env = {
        **os.environ,
        "REGCTL_ADMIN_TOKEN": ADMIN_TOKEN,
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        "NO_COLOR": "1",
    }
    regctl = Path(sys.executable).parent / "regctl"
    process = subprocess.Popen(
        [str(regctl), "user", "add", "carol", "-r", server.host],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    seen = b""

    def read() -> bytes:
        # Bounded: a process that never prompts fails the test instead of hanging it.
        ready, _, _ = select.select([leader], [], [], 30)
        assert ready, seen
        try:
            return os.read(leader, 1024)
        except OSError:  # the terminal closes with the process
            return b""

    try:
        for prompt in (b"Password:", b"Repeat the password:"):
            while prompt not in seen:
                chunk = read()
                assert chunk, seen
                seen += chunk
            seen = seen.replace(prompt, b"", 1)
            # Type only once echo is off: the prompt turns it off with TCSAFLUSH, which
            # would discard anything typed before.
            deadline = time.monotonic() + 30
            while termios.tcgetattr(leader)[3] & termios.ECHO:
                assert time.monotonic() < deadline, seen
                time.sleep(0.01)
            os.write(leader, b"carol-pw\n")
            seen += read()  # the line end the prompt prints after the hidden input
        while chunk := read():
            seen += chunk
    finally:
        os.close(leader)
    assert process.wait(timeout=60) == 0, seen
    assert b"carol-pw" not in seen  # never echoed
    assert b"added user carol" in seen
    assert _can_log_in(server, "carol", "carol-pw")
