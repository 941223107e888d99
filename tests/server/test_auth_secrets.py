"""No secret reaches a log line: a real `regd serve` with accounts, machine tokens and its
token service, logging at debug level with the access log on, is given every kind of
credential, right and wrong, and its whole output is then searched for each of them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest

from tests.helpers.servers import RegdFactory

pytestmark = pytest.mark.e2e

# Distinctive, so a match in the output can only be the secret itself.
ALICE_PW = "alice-Pw-5b1d7e0c"
WRONG_PW = "wrong-Pw-9c4e2a17"
CAROL_PW = "carol-Pw-3f8a6d52"
CAROL_NEW_PW = "carol-Pw-new-71e0b4c9"
ADMIN_TOKEN = "admin-Token-0e6f2b8d4a1c7395"
SERVICE = "regd"

CONFIG = """
[auth]
htpasswd = "{htpasswd}"

[[access]]
who = "authenticated"
repositories = ["{{user}}/**"]
actions = ["pull", "push", "delete"]
"""


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def token_parts(token: str) -> list[str]:
    """The token and, for a JWT, its signature: enough of a token to replay or forge it."""
    parts = [token]
    if token.count(".") == 2:
        parts.append(token.rsplit(".", 1)[1])
    return parts


def test_no_credential_reaches_the_log(
    regd_factory: RegdFactory, database_url: str | None, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(ALICE_PW.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    config = tmp_path / "regd.toml"
    config.write_text(CONFIG.format(htpasswd=htpasswd))
    server = regd_factory(
        database_url=database_url,
        log_level="debug",
        extra_args=["--config", str(config)],
        env={"REGD_ACCESS_LOG": "1", "REGD_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    secrets = [ALICE_PW, WRONG_PW, CAROL_PW, CAROL_NEW_PW, ADMIN_TOKEN]
    headers_sent: list[str] = []

    def send(
        http: httpx.Client, method: str, path: str, authorization: str, **kw: Any
    ) -> httpx.Response:
        headers_sent.append(authorization)
        return http.request(method, path, headers={"Authorization": authorization}, **kw)

    admin = f"Bearer {ADMIN_TOKEN}"
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # Accounts and a machine token through the admin API: the bodies carry secrets.
        r = send(
            http, "POST", "/admin/v1/users", admin, json={"name": "carol", "password": CAROL_PW}
        )
        assert r.status_code == 201, r.text
        r = send(
            http, "PUT", "/admin/v1/users/carol/password", admin, json={"password": CAROL_NEW_PW}
        )
        assert r.status_code == 200, r.text
        r = send(
            http,
            "POST",
            "/admin/v1/tokens",
            admin,
            json={"owner": "carol", "name": "ci", "scopes": ["repository:carol/*:pull,push"]},
        )
        assert r.status_code == 201, r.text
        machine = r.json()["secret"]
        # Its id (the middle part) is public, listed by `regctl token ls`; the rest is not.
        secrets.extend([machine, machine[-43:]])
        assert send(http, "GET", "/admin/v1/users", admin).status_code == 200

        # Basic on the registry API: right, wrong, and a machine token as the password.
        assert send(http, "GET", "/v2/", basic("alice", ALICE_PW)).status_code == 200
        assert send(http, "GET", "/v2/", basic("alice", WRONG_PW)).status_code == 401
        assert send(http, "GET", "/v2/", basic("nobody", WRONG_PW)).status_code == 401
        assert send(http, "GET", "/v2/", basic("carol", machine)).status_code == 200
        assert send(http, "GET", "/v2/", basic("carol", CAROL_NEW_PW)).status_code == 200
        assert send(http, "GET", "/v2/", basic("carol", CAROL_PW)).status_code == 401
        pushed = send(http, "POST", "/v2/carol/app/blobs/uploads/", basic("carol", machine))
        assert pushed.status_code == 202, pushed.text

        # The token service: GET with Basic (with and without a refresh token) ...
        scope = {"service": SERVICE, "scope": "repository:alice/app:pull,push"}
        r = send(http, "GET", "/auth/token", basic("alice", ALICE_PW), params=scope)
        assert r.status_code == 200, r.text
        alice_token = r.json()["token"]
        r = send(
            http,
            "GET",
            "/auth/token",
            basic("alice", ALICE_PW),
            params={**scope, "offline_token": "true"},
        )
        assert r.status_code == 200, r.text
        refresh = r.json()["refresh_token"]
        offline_token = r.json()["token"]
        carol_scope = {"service": SERVICE, "scope": "repository:carol/app:pull"}
        r = send(http, "GET", "/auth/token", basic("carol", machine), params=carol_scope)
        assert r.status_code == 200, r.text
        carol_token = r.json()["token"]
        r = send(http, "GET", "/auth/token", basic("alice", WRONG_PW), params=scope)
        assert r.status_code == 401
        # ... and POST, with the password and the refresh-token grants.
        form = {"service": SERVICE, "scope": scope["scope"], "client_id": "test"}
        r = http.post(
            "/auth/token",
            data={**form, "grant_type": "password", "username": "alice", "password": ALICE_PW},
        )
        assert r.status_code == 200, r.text
        password_grant = (r.json()["access_token"], r.json()["refresh_token"])
        r = http.post(
            "/auth/token", data={**form, "grant_type": "refresh_token", "refresh_token": refresh}
        )
        assert r.status_code == 200, r.text
        refresh_grant = (r.json()["access_token"], r.json()["refresh_token"])
        r = http.post(
            "/auth/token",
            data={**form, "grant_type": "password", "username": "alice", "password": WRONG_PW},
        )
        assert r.status_code == 401
        r = http.post(
            "/auth/token",
            data={**form, "grant_type": "refresh_token", "refresh_token": refresh + "x"},
        )
        assert r.status_code == 401
        tokens = [
            alice_token,
            offline_token,
            carol_token,
            refresh,
            *password_grant,
            *refresh_grant,
        ]
        for token in tokens:
            secrets.extend(token_parts(token))

        # Bearer: good tokens, and a forged one (a good token's signature on other claims).
        for token in (alice_token, offline_token, password_grant[0], refresh_grant[0]):
            r = send(http, "GET", "/v2/alice/app/tags/list", f"Bearer {token}")
            assert r.status_code == 404, r.text  # allowed, and nothing pushed there yet
        r = send(http, "GET", "/v2/carol/app/tags/list", f"Bearer {carol_token}")
        assert r.status_code == 404, r.text
        head, _, signature = alice_token.rpartition(".")
        forged = head.rsplit(".", 1)[0] + ".e30." + signature
        assert send(http, "GET", "/v2/alice/app/tags/list", f"Bearer {forged}").status_code == 401
        assert send(http, "GET", "/v2/", f"Bearer {forged}").status_code == 401
        assert send(http, "GET", "/v2/", "Basic not-base64!" + ALICE_PW).status_code == 401
        last = send(http, "GET", "/v2/", basic("alice", ALICE_PW))
        assert last.status_code == 200

    # Everything above was logged before the last request's line.
    server.stop()
    log = server.output()
    # The log is there to be searched: the access lines name the requests and the callers.
    assert "path=/auth/token" in log
    assert "user=alice" in log
    assert "user=carol" in log
    secrets.extend(headers_sent)
    secrets.extend(value.split(" ", 1)[1] for value in headers_sent)
    leaked = sorted({s for s in secrets if s and s in log}, key=secrets.index)
    assert not leaked, f"secrets in regd's output: {leaked}\n--- output ---\n{log}"
