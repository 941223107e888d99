"""A real `regd serve` with an htpasswd file and a policy: skopeo and raw HTTP clients log in,
push where the policy allows and are refused where it does not; and an open registry refuses
to start on a public address; a verified client certificate logs its account in."""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.helpers.clients import Skopeo
from tests.helpers.oci import LayoutImage, build_image, machine_files, sha256
from tests.helpers.servers import RegdFactory, free_port
from tests.server.test_tls import Pki, access_lines, tls_env, wait_for
from tests.server.test_tls import pki as pki  # a fixture, for the mutual-TLS test

pytestmark = pytest.mark.e2e

POLICY = """
[auth]
htpasswd = "{htpasswd}"

[[access]]
who = "authenticated"
repositories = ["{{user}}/**"]
actions = ["pull", "push", "delete"]

[[access]]
who = "alice"
repositories = ["team/**"]
actions = ["pull", "push"]

[[access]]
who = "bob"
repositories = ["team/**"]
actions = ["pull"]
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    scratch = tmp_path_factory.mktemp("auth-image")
    return build_image(
        scratch / "layout", "v1", files=machine_files(scratch / "files", unique=b"auth")
    )


def _config(tmp_path: Path) -> Path:
    htpasswd = tmp_path / "htpasswd"
    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"
        for user, password in (("alice", "alice-pw"), ("bob", "bob-pw"))
    ]
    htpasswd.write_text("\n".join(lines) + "\n")
    config = tmp_path / "regd.toml"
    config.write_text(POLICY.format(htpasswd=htpasswd))
    return config


def test_clients_push_where_allowed_and_are_refused_where_not(
    regd_factory: RegdFactory,
    database_url: str | None,
    image: LayoutImage,
    tmp_path: Path,
) -> None:
    server = regd_factory(
        database_url=database_url, extra_args=["--config", str(_config(tmp_path))]
    )
    skopeo = Skopeo(tmp_path / "skopeo")
    host = server.host

    skopeo.copy(image.ref, f"docker://{host}/team/app:v1", "--dest-creds", "alice:alice-pw")
    with pytest.raises(AssertionError, match=r"(?i)403|forbidden|denied"):
        skopeo.copy(image.ref, f"docker://{host}/team/app:v2", "--dest-creds", "bob:bob-pw")
    with pytest.raises(AssertionError, match=r"(?i)401|unauthorized"):
        skopeo.copy(image.ref, f"docker://{host}/team/app:v3", "--dest-creds", "bob:wrong")
    # Anonymous: the token service hands out a token that grants nothing.
    with pytest.raises(AssertionError, match=r"(?i)403|forbidden|denied"):
        skopeo.copy(image.ref, f"docker://{host}/team/app:v4")

    # An auth file, as `skopeo login` / `podman login` write it.
    authfile = tmp_path / "auth.json"
    secret = base64.b64encode(b"bob:bob-pw").decode()
    authfile.write_text(json.dumps({"auths": {host: {"auth": secret}}}))
    raw = skopeo.inspect_raw(f"docker://{host}/team/app:v1", "--authfile", str(authfile))
    assert sha256(raw) == image.digest
    skopeo.copy(image.ref, f"docker://{host}/bob/own:v1", "--dest-authfile", str(authfile))
    with pytest.raises(AssertionError, match=r"(?i)403|forbidden|denied"):
        skopeo.copy(image.ref, f"docker://{host}/alice/x:v1", "--dest-authfile", str(authfile))

    with httpx.Client(base_url=server.url) as http:
        # The token flow by hand: the challenge, Basic to the token service, Bearer after.
        probe = http.get("/v2/")
        assert probe.status_code == 401
        challenge = probe.headers["WWW-Authenticate"]
        assert challenge == f'Bearer realm="http://{host}/auth/token",service="regd"'
        r = http.get(
            "/auth/token",
            params={"service": "regd", "scope": "repository:team/app:pull,push"},
            auth=("bob", "bob-pw"),
        )
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        tags = http.get("/v2/team/app/tags/list", headers=headers)
        assert tags.json()["tags"] == ["v1"]
        refused = http.put(
            "/v2/team/app/manifests/v9",
            content=raw,
            headers={**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert refused.status_code == 403
        assert refused.json()["errors"][0]["code"] == "DENIED"
        assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
        # Nothing changed.
        assert http.get("/v2/team/app/tags/list", headers=headers).json()["tags"] == ["v1"]
        assert http.get("/auth/jwks.json").json()["keys"]


def test_an_open_registry_refuses_a_public_address(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "regd",
        "serve",
        "--addr",
        f"0.0.0.0:{free_port()}",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "auth.open = true" in lines[0]
    assert "0.0.0.0" in lines[0]


def test_workers_share_keys_and_accounts(
    regd_factory: RegdFactory, database_url: str | None, tmp_path: Path
) -> None:
    server = regd_factory(
        database_url=database_url,
        workers=2,
        extra_args=["--config", str(_config(tmp_path))],
    )
    with httpx.Client(base_url=server.url) as http:
        r = http.get(
            "/auth/token",
            params={"service": "regd", "scope": "repository:alice/app:pull"},
            auth=("alice", "alice-pw"),
        )
        assert r.status_code == 200, r.text
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        # New connections land on either worker; each verifies the other's tokens.
        for _ in range(20):
            with httpx.Client(base_url=server.url) as fresh:
                assert fresh.get("/v2/alice/app/tags/list", headers=headers).status_code == 404
                assert fresh.get("/v2/team/app/tags/list", headers=headers).status_code == 403
        assert len(list((server.data_dir / "auth").glob("signing-*.key"))) == 1


def test_client_certificate_logs_its_account_in(
    regd_factory: RegdFactory, database_url: str | None, pki: Pki
) -> None:
    """With mutual TLS and authentication on, a verified client certificate whose name is a
    stored account is that account; the access log names whoever was let in."""
    admin_token = "an-admin-token-for-the-tls-test"
    rules = [{"who": "alice", "actions": ["catalog"]}]
    server = regd_factory(
        database_url=database_url,
        env=tls_env(
            pki,
            REGD_TLS_CLIENT_CA=str(pki.ca_file),
            REGD_TLS_CLIENT_AUTH="optional",
            REGD_ACCESS_LOG="1",
            REGD_ADMIN_TOKEN=admin_token,
            REGD_ACCESS=json.dumps(rules),
        ),
        log_level="info",
        tls_verify=pki.client_context(),
    )
    alice = pki.ca.issue_cert("alice@example.org", common_name="alice")
    mallory = pki.ca.issue_cert("mallory@example.org", common_name="mallory")
    catalog = f"https://{server.host}/v2/_catalog"
    with httpx.Client(verify=pki.client_context()) as http:
        added = http.post(
            f"https://{server.host}/admin/v1/users",
            json={"name": "alice", "password": "alice-password-1", "groups": []},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert added.status_code == 201, added.text
        anonymous = http.get(catalog)
        assert anonymous.status_code == 401
        assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer realm=")
        by_password = http.get(catalog, auth=("alice", "alice-password-1"))
        assert by_password.status_code == 200, by_password.text
    with httpx.Client(verify=pki.client_context(alice)) as http:
        assert http.get(catalog).status_code == 200
    with httpx.Client(verify=pki.client_context(mallory)) as http:
        # Issued by the trusted CA, but no account has that name.
        stranger = http.get(catalog)
        assert stranger.status_code == 401
        assert "mallory" in stranger.json()["errors"][0]["message"]
    wait_for(
        lambda: sum("path=/v2/_catalog" in line for line in access_lines(server)) == 4,
        "four access log lines for the catalog",
    )
    answers = [
        (line.split(" status=")[1].split(" ")[0], line.rsplit(" ", 1)[1])
        for line in access_lines(server)
        if "path=/v2/_catalog" in line
    ]
    assert answers == [
        ("401", "user=-"),
        ("200", "user=alice"),
        ("200", "user=alice"),
        ("401", "user=mallory"),
    ]


def test_a_refused_push_with_a_large_body_reads_its_refusal(
    regd_factory: RegdFactory, tmp_path: Path
) -> None:
    """A client sends its whole body before it reads the answer: a refusal given before the
    body was read must still reach it (the rest is taken in, then the connection closes)."""
    server = regd_factory(extra_args=["--config", str(_config(tmp_path))])
    body = b"x" * (16 * 1024 * 1024)
    digest = sha256(body)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for auth in (None, ("bob", "wrong"), ("bob", "bob-pw")):
            r = client.post(
                "/v2/team/app/blobs/uploads/", params={"digest": digest}, content=body, auth=auth
            )
            assert r.status_code in (401, 403), r.text
            assert r.json()["errors"][0]["code"] in ("UNAUTHORIZED", "DENIED")
        # The registry answers on as before.
        assert client.get("/v2/", auth=("alice", "alice-pw")).status_code == 200


# Every spelling the server might route to the admin API or the metrics.
ADMIN_SPELLINGS = (
    "/admin/v1/status",
    "//admin/v1/status",
    "/admin//v1/status",
    "/admin/v1/status/",
    "///admin/v1/usage",
    "/metrics",
    "/metrics/",
    "//metrics",
    "//metrics//",
)
# Spellings of reads of alice's repository, which bob may not pull; and of the catalog.
REGISTRY_SPELLINGS = (
    "/v2/alice/app/tags/list",
    "//v2/alice/app/tags/list",
    "///v2/alice/app/tags/list/",
    "//v2/alice/app/manifests/v1",
    "//v2/alice/app/blobs/{digest}",
    "//v2/alice/app/referrers/{digest}",
    "//v2/_catalog",
)


def _raw_request(
    port: int, method: str, path: str, user: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    """One request with its path sent byte for byte (http.client does not tidy it)."""
    secret = base64.b64encode(user.encode()).decode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            method, path, body=body, headers={"Authorization": f"Basic {secret}", **headers}
        )
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_no_spelling_of_a_path_lets_a_user_past_the_policy(
    regd_factory: RegdFactory, tmp_path: Path
) -> None:
    """The router ignores extra leading slashes: whatever a path's spelling, the policy is
    asked about what the router will serve."""
    server = regd_factory(extra_args=["--config", str(_config(tmp_path))])
    config = b"{}"
    digest = sha256(config)
    status, _ = _raw_request(
        server.port, "POST", f"/v2/alice/app/blobs/uploads/?digest={digest}", "alice:alice-pw",
        config,
    )  # fmt: skip
    assert status == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    status, _ = _raw_request(
        server.port, "PUT", "/v2/alice/app/manifests/v1", "alice:alice-pw", manifest,
        **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    assert status == 201
    for path in REGISTRY_SPELLINGS:
        status, body = _raw_request(server.port, "GET", path.format(digest=digest), "bob:bob-pw")
        assert status == 403, (path, status, body[:200])
    for path in ADMIN_SPELLINGS:
        status, body = _raw_request(server.port, "GET", path, "alice:alice-pw")
        assert status in (403, 404), (path, status, body[:200])
        assert b"regd_" not in body, (path, body[:200])
        assert b"version" not in body, (path, body[:200])
    # A write in such a spelling meets the policy too.
    status, body = _raw_request(
        server.port, "PUT", "//v2/alice/app/manifests/v2", "bob:bob-pw", manifest,
        **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    assert status == 403, body[:200]
    status, body = _raw_request(server.port, "GET", "/v2/alice/app/tags/list", "alice:alice-pw")
    assert json.loads(body)["tags"] == ["v1"]


def test_a_refused_small_body_leaves_the_connection_open(
    regd_factory: RegdFactory, tmp_path: Path
) -> None:
    """A refusal whose body was read to its end keeps the connection: a client still
    writing its body when the server closes (containerd's) reports the broken write
    instead of the 403. The same connection then carries the next request."""
    server = regd_factory(extra_args=["--config", str(_config(tmp_path))])
    secret = base64.b64encode(b"bob:bob-pw").decode()
    headers = {
        "Authorization": f"Basic {secret}",
        "Content-Type": "application/vnd.oci.image.manifest.v1+json",
    }
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("PUT", "/v2/alice/app/manifests/v1", body=b"{}", headers=headers)
        refused = connection.getresponse()
        assert refused.status == 403
        assert refused.getheader("connection") != "close"
        refused.read()
        sock = connection.sock
        connection.request("GET", "/v2/bob/none/tags/list", headers=headers)
        again = connection.getresponse()
        again.read()
        assert again.status == 404
        assert connection.sock is sock, "the connection was opened again"
    finally:
        connection.close()
