"""Real clients against a real `regd serve` with authentication on, on SQLite and PostgreSQL.

The registry has an htpasswd file made by `htpasswd -B` (alice, bob), an account added
through the admin API (carol, group `ci`), a machine token of carol's limited to `team/*`,
and `[[access]]` rules. Every client pushes where its rights allow and is refused where they
do not, and a refused push leaves the registry as it was: no tag, no repository.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.helpers.clients import Podman, Skopeo
from tests.helpers.oci import LayoutImage, run_tool, sha256
from tests.helpers.servers import RegdFactory, RegdServer

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "admin-token-of-the-auth-client-tests"
PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-22", "carol": "carol-pw-333"}
REFUSED = r"(?i)\b403\b|forbidden|denied|\b401\b|unauthorized"

POLICY = """
admin_token = "{admin_token}"

[auth]
htpasswd = "{htpasswd}"

[[access]]
who = "authenticated"
repositories = ["{{user}}/**"]
actions = ["pull", "push", "delete"]

[[access]]
who = ["alice", "group:ci"]
repositories = ["team/**"]
actions = ["pull", "push"]

[[access]]
who = "bob"
repositories = ["team/**"]
actions = ["pull"]

[[access]]
who = "alice"
repositories = ["**"]
actions = ["pull", "catalog"]
"""


@dataclass
class AuthRegd:
    server: RegdServer
    # carol's machine token, limited to repository:team/*:pull,push.
    machine_secret: str

    @property
    def host(self) -> str:
        return self.server.host

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            verify=self.server.verify,
            auth=("alice", PASSWORDS["alice"]),
            timeout=30.0,
        )

    def digest(self, repository: str, tag: str) -> str | None:
        """The tag's manifest digest, or None when the tag does not exist (alice may pull
        everything, so 404 is the only other answer)."""
        with self._client() as http:
            answer = http.head(
                f"/v2/{repository}/manifests/{tag}",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.status_code
        return answer.headers["Docker-Content-Digest"]

    def repositories(self) -> list[str]:
        with self._client() as http:
            answer = http.get("/v2/_catalog")
        assert answer.status_code == 200, answer.text
        repos: list[str] = answer.json()["repositories"]
        return repos

    def assert_untouched(self, repository: str, tag: str) -> None:
        assert self.digest(repository, tag) is None, f"{repository}:{tag} was pushed"


def make_htpasswd(path: Path, users: dict[str, str]) -> None:
    """The file as operators make it: apache2-utils' `htpasswd -B` (bcrypt)."""
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        run_tool(["htpasswd", "-B", "-b", *create, str(path), user, password])
    assert path.read_text().count(":$2y$") == len(users)


def start_auth_regd(
    regd_factory: RegdFactory,
    database_url: str | None,
    scratch: Path,
    **options: object,
) -> AuthRegd:
    scratch.mkdir(parents=True, exist_ok=True)
    htpasswd = scratch / "htpasswd"
    make_htpasswd(htpasswd, {"alice": PASSWORDS["alice"], "bob": PASSWORDS["bob"]})
    config = scratch / "regd.toml"
    config.write_text(POLICY.format(admin_token=ADMIN_TOKEN, htpasswd=htpasswd))
    server = regd_factory(
        database_url=database_url, extra_args=["--config", str(config)], **options
    )
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.url, verify=server.verify, headers=admin) as http:
        added = http.post(
            "/admin/v1/users",
            json={"name": "carol", "password": PASSWORDS["carol"], "groups": ["ci"]},
        )
        assert added.status_code == 201, added.text
        made = http.post(
            "/admin/v1/tokens",
            json={
                "owner": "carol",
                "name": "ci",
                "scopes": ["repository:team/*:pull,push"],
                "expires_in": None,
            },
        )
        assert made.status_code == 201, made.text
        secret: str = made.json()["secret"]
    return AuthRegd(server, secret)


@pytest.fixture
def auth_regd(regd_factory: RegdFactory, database_url: str | None, tmp_path: Path) -> AuthRegd:
    return start_auth_regd(regd_factory, database_url, tmp_path / "regd-auth")


def seed(skopeo: Skopeo, image: LayoutImage, regd: AuthRegd, target: str) -> None:
    """Put the test image at `target` (a repository alice may push to)."""
    creds = f"alice:{PASSWORDS['alice']}"
    skopeo.copy(image.ref, f"docker://{regd.host}/{target}", "--dest-creds", creds)


# -- skopeo --------------------------------------------------------------------------------


def test_skopeo_creds_and_authfile(
    auth_regd: AuthRegd, skopeo: Skopeo, oci_image: LayoutImage, tmp_path: Path
) -> None:
    host = auth_regd.host
    alice = f"alice:{PASSWORDS['alice']}"
    skopeo.copy(oci_image.ref, f"docker://{host}/team/app:v1", "--dest-creds", alice)
    assert auth_regd.digest("team/app", "v1") == oci_image.digest

    # bob may pull team/** but not push there.
    bob = f"bob:{PASSWORDS['bob']}"
    raw = skopeo.inspect_raw(f"docker://{host}/team/app:v1", "--creds", bob)
    assert sha256(raw) == oci_image.digest
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.copy(oci_image.ref, f"docker://{host}/team/app:v2", "--dest-creds", bob)
    auth_regd.assert_untouched("team/app", "v2")

    # The same through an auth file, as `skopeo login` writes it; carol's own namespace is
    # hers, bob's is not.
    authfile = tmp_path / "carol-auth.json"
    skopeo(
        "login",
        "--tls-verify=false",
        "--authfile",
        str(authfile),
        "-u",
        "carol",
        "-p",
        PASSWORDS["carol"],
        host,
    )
    skopeo.copy(oci_image.ref, f"docker://{host}/carol/own:v1", "--dest-authfile", str(authfile))
    assert auth_regd.digest("carol/own", "v1") == oci_image.digest
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.copy(
            oci_image.ref, f"docker://{host}/bob/theirs:v1", "--dest-authfile", str(authfile)
        )
    assert "bob/theirs" not in auth_regd.repositories()
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.inspect_raw(f"docker://{host}/bob/theirs:v1", "--authfile", str(authfile))


def test_machine_token_as_skopeo_password(
    auth_regd: AuthRegd, skopeo: Skopeo, oci_image: LayoutImage
) -> None:
    host = auth_regd.host
    creds = f"ci:{auth_regd.machine_secret}"
    skopeo.copy(oci_image.ref, f"docker://{host}/team/ci:v1", "--dest-creds", creds)
    assert auth_regd.digest("team/ci", "v1") == oci_image.digest
    # carol may push to carol/**, but her token is limited to team/*.
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.copy(oci_image.ref, f"docker://{host}/carol/x:v1", "--dest-creds", creds)
    assert "carol/x" not in auth_regd.repositories()
    # A wrong secret of the right shape logs nobody in.
    forged = auth_regd.machine_secret[:-4] + "AAAA"
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.copy(oci_image.ref, f"docker://{host}/team/ci:v2", "--dest-creds", f"ci:{forged}")
    auth_regd.assert_untouched("team/ci", "v2")


# -- podman --------------------------------------------------------------------------------


def test_podman_login_push_pull(
    auth_regd: AuthRegd, skopeo: Skopeo, podman: Podman, oci_image: LayoutImage
) -> None:
    host = auth_regd.host
    seed(skopeo, oci_image, auth_regd, "team/base:v1")
    # Without logging in, pulling asks for credentials.
    with pytest.raises(AssertionError, match=REFUSED):
        podman("pull", "--tls-verify=false", f"{host}/team/base:v1")

    podman("login", "--tls-verify=false", "-u", "bob", "-p", PASSWORDS["bob"], host)
    podman("pull", "--tls-verify=false", f"{host}/team/base:v1")
    podman("tag", f"{host}/team/base:v1", f"{host}/bob/mine:v1", f"{host}/team/base:bob")
    podman("push", "--tls-verify=false", f"{host}/bob/mine:v1")
    assert auth_regd.digest("bob/mine", "v1") is not None
    with pytest.raises(AssertionError, match=REFUSED):
        podman("push", "--tls-verify=false", f"{host}/team/base:bob")
    auth_regd.assert_untouched("team/base", "bob")

    # carol's machine token as the password of `podman login`.
    podman("logout", host)
    podman("login", "--tls-verify=false", "-u", "ci", "-p", auth_regd.machine_secret, host)
    podman("tag", f"{host}/team/base:v1", f"{host}/team/from-podman:v1", f"{host}/carol/p:v1")
    podman("push", "--tls-verify=false", f"{host}/team/from-podman:v1")
    assert auth_regd.digest("team/from-podman", "v1") is not None
    with pytest.raises(AssertionError, match=REFUSED):
        podman("push", "--tls-verify=false", f"{host}/carol/p:v1")
    assert "carol/p" not in auth_regd.repositories()

    podman.reset()
    podman("pull", "--tls-verify=false", f"{host}/team/from-podman:v1")


def test_podman_login_over_tls_with_the_test_ca(
    regd_factory: RegdFactory,
    database_url: str | None,
    skopeo: Skopeo,
    podman: Podman,
    oci_image: LayoutImage,
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    pki = tmp_path / "pki"
    cert_dir = pki / "certs.d"
    cert_dir.mkdir(parents=True)
    ca.cert_pem.write_to_path(str(cert_dir / "ca.crt"))
    leaf.cert_chain_pems[0].write_to_path(str(pki / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(pki / "key.pem"))
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    regd = start_auth_regd(
        regd_factory,
        database_url,
        tmp_path / "regd-auth",
        env={"REGD_TLS_CERT": str(pki / "cert.pem"), "REGD_TLS_KEY": str(pki / "key.pem")},
        tls_verify=trust,
    )
    host = regd.host
    certs = f"--cert-dir={cert_dir}"
    skopeo(
        "copy",
        f"--dest-cert-dir={cert_dir}",
        "--dest-creds",
        f"alice:{PASSWORDS['alice']}",
        oci_image.ref,
        f"docker://{host}/team/tls:v1",
    )
    podman("login", certs, "-u", "carol", "-p", PASSWORDS["carol"], host)
    podman("pull", certs, f"{host}/team/tls:v1")
    podman("tag", f"{host}/team/tls:v1", f"{host}/carol/tls:v1", f"{host}/bob/tls:v1")
    podman("push", certs, f"{host}/carol/tls:v1")
    assert regd.digest("carol/tls", "v1") is not None
    with pytest.raises(AssertionError, match=REFUSED):
        podman("push", certs, f"{host}/bob/tls:v1")
    assert "bob/tls" not in regd.repositories()


# -- buildah -------------------------------------------------------------------------------


class Buildah(Podman):
    binary = "buildah"

    def base_args(self) -> list[str]:
        return [
            self.path,
            "--storage-driver",
            "vfs",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
        ]


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[Buildah]:
    runroot = Path(tempfile.mkdtemp(prefix="regd-buildah-"))
    try:
        yield Buildah(tmp_path / "buildah", runroot)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def test_buildah_login_push_pull(
    auth_regd: AuthRegd, buildah: Buildah, oci_image: LayoutImage
) -> None:
    host = auth_regd.host
    # buildah prints the pulled image's ID last; push takes local images only.
    local = buildah("pull", oci_image.ref).split()[-1]
    buildah("login", "--tls-verify=false", "-u", "alice", "-p", PASSWORDS["alice"], host)
    buildah("push", "--tls-verify=false", local, f"docker://{host}/team/buildah:v1")
    assert auth_regd.digest("team/buildah", "v1") is not None
    # alice may pull bob's namespace but not push to it.
    with pytest.raises(AssertionError, match=REFUSED):
        buildah("push", "--tls-verify=false", local, f"docker://{host}/bob/b:v1")
    assert "bob/b" not in auth_regd.repositories()

    buildah("rmi", "--all", "--force")
    buildah("pull", "--tls-verify=false", f"{host}/team/buildah:v1")
    buildah("logout", host)
    buildah("rmi", "--all", "--force")
    with pytest.raises(AssertionError, match=REFUSED):
        buildah("pull", "--tls-verify=false", f"{host}/team/buildah:v1")


# -- containerd's ctr ----------------------------------------------------------------------

CONTAINERD_CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""
CONTAINERD_START_TIMEOUT = 30.0


class Containerd:
    """A private containerd (own root, state and socket) for `ctr` to talk to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "containerd.sock"
        config = root / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(root=root))
        self.log = root / "containerd.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + CONTAINERD_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd exited:\n{self.log.read_text()}")
            done = subprocess.run(
                self.argv("version"), capture_output=True, timeout=30, check=False
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"containerd did not answer on {self.socket}:\n{self.log.read_text()}")

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", "regd-test", *args]

    def __call__(self, *args: str) -> str:
        return run_tool(self.argv(*args), timeout=300)

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    # A short path: the socket's must fit in a sockaddr_un (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="regd-ctrd-"))
    try:
        daemon = Containerd(root)
    except (RuntimeError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"containerd cannot run here: {exc}")
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_ctr_pull_push_with_user(
    auth_regd: AuthRegd, skopeo: Skopeo, containerd: Containerd, oci_image: LayoutImage
) -> None:
    host = auth_regd.host
    seed(skopeo, oci_image, auth_regd, "team/ctr:v1")
    source = f"{host}/team/ctr:v1"
    with pytest.raises(AssertionError, match=REFUSED):
        containerd("images", "pull", "--plain-http", "--snapshotter", "native", source)
    bob = f"bob:{PASSWORDS['bob']}"
    containerd("images", "pull", "--plain-http", "--snapshotter", "native", "--user", bob, source)
    assert oci_image.digest in containerd("images", "ls")

    own, refused = f"{host}/bob/ctr:v1", f"{host}/team/ctr:bob"
    containerd("images", "tag", source, own)
    containerd("images", "tag", source, refused)
    containerd("images", "push", "--plain-http", "--user", bob, own)
    assert auth_regd.digest("bob/ctr", "v1") == oci_image.digest
    with pytest.raises(AssertionError, match=REFUSED):
        containerd("images", "push", "--plain-http", "--user", bob, refused)
    auth_regd.assert_untouched("team/ctr", "bob")


# -- docker's OAuth2 flow, by hand ---------------------------------------------------------


def test_oauth2_password_then_refresh_token(
    auth_regd: AuthRegd, skopeo: Skopeo, oci_image: LayoutImage
) -> None:
    """What docker does with an identity token: the password grant once (at login), then
    the refresh-token grant for each scope it needs."""
    seed(skopeo, oci_image, auth_regd, "team/oauth:v1")
    with httpx.Client(base_url=auth_regd.server.url, timeout=30.0) as http:
        probe = http.get("/v2/")
        assert probe.status_code == 401
        challenge = probe.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="')
        assert 'service="regd"' in challenge
        login = http.post(
            "/auth/token",
            data={
                "grant_type": "password",
                "username": "bob",
                "password": PASSWORDS["bob"],
                "service": "regd",
                "client_id": "docker",
                "access_type": "offline",
                "scope": "repository:team/oauth:pull",
            },
        )
        assert login.status_code == 200, login.text
        refresh = login.json()["refresh_token"]
        wrong = http.post(
            "/auth/token",
            data={
                "grant_type": "password",
                "username": "bob",
                "password": "not-bob's",
                "service": "regd",
            },
        )
        assert wrong.status_code == 401

        answer = http.post(
            "/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "service": "regd",
                "client_id": "docker",
                "scope": "repository:team/oauth:pull,push",
            },
        )
        assert answer.status_code == 200, answer.text
        # bob asked for push too; he gets what the policy gives him.
        assert answer.json()["scope"] == "repository:team/oauth:pull"
        bearer = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        manifest = http.get(
            "/v2/team/oauth/manifests/v1",
            headers={**bearer, "Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert manifest.status_code == 200
        assert sha256(manifest.content) == oci_image.digest
        put = http.put(
            "/v2/team/oauth/manifests/v2",
            content=manifest.content,
            headers={**bearer, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert put.status_code == 403, put.text
        assert put.json()["errors"][0]["code"] == "DENIED"
        assert 'error="insufficient_scope"' in put.headers["WWW-Authenticate"]
        auth_regd.assert_untouched("team/oauth", "v2")

        forged = http.post(
            "/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh + "x", "service": "regd"},
        )
        assert forged.status_code == 401
        # The refresh token is not an access token.
        as_bearer = http.get(
            "/v2/team/oauth/tags/list", headers={"Authorization": f"Bearer {refresh}"}
        )
        assert as_bearer.status_code == 401
