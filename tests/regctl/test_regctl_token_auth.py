"""regctl against Distribution with Docker token (Bearer) auth and a real token server.

Accounts on the token server: alice/secret may pull, push and delete everywhere and list
the catalog; bob/bob-secret may only pull; anonymous requests get tokens granting nothing.
Distribution 2.8 answers a token with insufficient scope by 401 UNAUTHORIZED (with
`error="insufficient_scope"` in the challenge), never 403: the assertions say 401.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from regd.client import MONOLITHIC_LIMIT, AuthError, Credentials, CredentialStore, RegistryClient
from regd.clock import ManualClock
from regd.oci.digest import Digest
from regd.oci.reference import Reference
from tests.helpers.reference import require_distribution
from tests.helpers.servers import DistributionServer, ServerStartError
from tests.helpers.token_server import SigningKey, TokenAuthDistribution, TokenServer
from tests.regctl import support as content
from tests.regctl.support import CliResult

Cli = Callable[..., CliResult]

ALICE = Credentials("alice", "secret")
BOB = Credentials("bob", "bob-secret")
REPO = "team/app"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    # One RSA key for the session: generating one costs more than a whole test here.
    return SigningKey.generate(tmp_path_factory.mktemp("token-keys"))


@pytest.fixture
def token_server(signing_key: SigningKey) -> Iterator[TokenServer]:
    server = TokenServer(signing_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def token_registry(
    token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenAuthDistribution]:
    require_distribution()
    scratch = tmp_path_factory.mktemp("token-distribution")
    registry = TokenAuthDistribution(
        root=scratch / "root", scratch=scratch, token_server=token_server
    )
    try:
        registry.start()
    except ServerStartError as exc:
        message = str(exc)
    else:
        try:
            yield registry
        finally:
            registry.stop()
        return
    pytest.fail(message, pytrace=False)


def store_with(directory: Path, host: str, credentials: Credentials) -> CredentialStore:
    """A config.json of its own, so one test can act as several accounts."""
    store = CredentialStore(directory)
    store.save(host, credentials)
    return store


def login_default(host: str, credentials: Credentials) -> None:
    """Credentials where the CLI looks: $DOCKER_CONFIG, isolated per test by conftest."""
    CredentialStore().save(host, credentials)


def ref(host: str, identifier: str | Digest | None = None, repository: str = REPO) -> Reference:
    if isinstance(identifier, Digest):
        return Reference(host, repository, None, identifier)
    return Reference(host, repository, identifier)


async def alice_pushes(host: str, tmp_path: Path, tag: str = "v1") -> content.Pushed:
    """Content for the tests that read it; the push itself is covered on its own."""
    store = store_with(tmp_path / "alice-setup", host, ALICE)
    async with RegistryClient(credentials=store) as client:
        return await content.push_image(client, host, REPO, tag)


def push_as_alice(host: str, tmp_path: Path) -> content.Pushed:
    # For the CLI tests: they are synchronous, since main() runs trio itself.
    return trio.run(alice_pushes, host, tmp_path)


def assert_one_line_error(result: CliResult, *needles: str) -> str:
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("regctl: error: "), lines[0]
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- the happy path ------------------------------------------------------------------------


async def test_alice_pushes_lists_pulls_and_deletes(
    token_registry: TokenAuthDistribution, token_server: TokenServer, tmp_path: Path
) -> None:
    host = token_registry.host
    # One layer above the monolithic limit: its upload is a streamed PATCH, which the client
    # cannot replay, so it must already carry a valid token.
    big = os.urandom(MONOLITHIC_LIMIT + 4321)
    small = b"small layer"
    store = store_with(tmp_path / "alice", host, ALICE)
    async with RegistryClient(credentials=store) as client:
        await client.ping(host)
        image = await content.push_image(client, host, REPO, "v1", layers=[small, big])
        assert await client.tags(ref(host)) == ["v1"]
        assert await client.catalog(host) == [REPO]
        fetched = await client.get_manifest(ref(host, "v1"))
        assert fetched.data == image.data
        assert fetched.digest == image.digest
        assert await client.get_blob(ref(host, Digest.of(small))) == small
        assert await client.get_blob(ref(host, Digest.of(big))) == big
        await client.delete_manifest(ref(host, image.digest))
        assert await client.head_manifest(ref(host, image.digest)) is None

    issued = token_server.issued()
    assert issued, "no token was ever requested: the registry is not enforcing token auth"
    assert {r.account for r in issued} == {"alice"}
    assert token_server.refused() == []
    granted = {
        (entry["name"], action)
        for request in issued
        for entry in request.granted
        for action in entry["actions"]
    }
    assert {(REPO, "pull"), (REPO, "push"), (REPO, "delete"), ("catalog", "*")} <= granted


def test_cli_reads_through_token_auth(
    cli: Cli, token_registry: TokenAuthDistribution, token_server: TokenServer, tmp_path: Path
) -> None:
    host = token_registry.host
    image = push_as_alice(host, tmp_path)
    login_default(host, ALICE)
    token_server.reset()

    listed = cli("ls", f"{host}/{REPO}", "--json")
    assert listed.code == 0, listed
    assert [row["digest"] for row in listed.json()["tags"]] == [str(image.digest)]
    digest = cli("digest", f"{host}/{REPO}:v1")
    assert digest.code == 0, digest
    assert digest.out.strip() == str(image.digest)
    removed = cli("rm", f"{host}/{REPO}@{image.digest}")
    assert removed.code == 0, removed
    assert_one_line_error(cli("digest", f"{host}/{REPO}:v1"), "HTTP 404", "MANIFEST_UNKNOWN")
    assert {r.account for r in token_server.issued()} == {"alice"}


# -- token caching -------------------------------------------------------------------------


async def test_one_token_serves_many_pulls(
    token_registry: TokenAuthDistribution, token_server: TokenServer, tmp_path: Path
) -> None:
    host = token_registry.host
    image = await alice_pushes(host, tmp_path)
    layer = Digest.parse(json.loads(image.data)["layers"][0]["digest"])
    token_server.reset()
    store = store_with(tmp_path / "alice", host, ALICE)
    async with RegistryClient(credentials=store) as client:
        for _ in range(5):
            assert await client.tags(ref(host)) == ["v1"]
            assert (await client.get_manifest(ref(host, "v1"))).digest == image.digest
            info = await client.head_manifest(ref(host, "v1"))
            assert info is not None
            assert await client.blob_size(ref(host, layer)) == 1024
    # Twenty requests, all with the pull scope on one repository: one token.
    assert token_server.token_count == 1
    assert token_server.issued()[0].scopes == (f"repository:{REPO}:pull",)


async def test_pushes_reuse_their_token(
    token_registry: TokenAuthDistribution, token_server: TokenServer, tmp_path: Path
) -> None:
    host = token_registry.host
    store = store_with(tmp_path / "alice", host, ALICE)
    async with RegistryClient(credentials=store) as client:
        for tag in ("v1", "v2", "v3"):
            await content.push_image(client, host, REPO, tag)
    # Three images are 15 requests (a POST and a PUT per blob, two blobs, a manifest PUT).
    # At most two tokens: Distribution's first challenge spells the scope
    # `repository:team/app:push,pull`, the client's own `pull,push`, and the client keys
    # its cache by the scope text, so the token fetched after that first challenge is
    # filed under both spellings and the next request fetches one under its own.
    assert 1 <= token_server.token_count <= 2


# -- expiry --------------------------------------------------------------------------------


async def test_expired_token_is_replaced(
    token_registry: TokenAuthDistribution, token_server: TokenServer, tmp_path: Path
) -> None:
    host = token_registry.host
    await alice_pushes(host, tmp_path)
    token_server.reset()
    token_server.expires_in = 60
    # The client's clock, moved by the test; the JWTs stay valid in real time throughout.
    clock = ManualClock(time.time())
    store = store_with(tmp_path / "alice", host, ALICE)
    async with RegistryClient(credentials=store, clock=clock) as client:
        assert await client.tags(ref(host)) == ["v1"]
        assert token_server.token_count == 1
        # Kept until shortly before `expires_in` runs out ...
        clock.advance(45)
        assert await client.tags(ref(host)) == ["v1"]
        assert token_server.token_count == 1
        # ... and not sent in its last seconds: a fresh one is fetched.
        clock.advance(10)
        assert await client.tags(ref(host)) == ["v1"]
        assert await client.get_manifest(ref(host, "v1"))
    assert token_server.token_count == 2
    assert token_server.refused() == []


@pytest.fixture(scope="session")
def second_signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.generate(tmp_path_factory.mktemp("token-keys-rotated"))


async def test_token_refused_by_the_registry_is_replaced(
    token_registry: TokenAuthDistribution,
    token_server: TokenServer,
    second_signing_key: SigningKey,
    tmp_path: Path,
) -> None:
    host = token_registry.host
    await alice_pushes(host, tmp_path)
    token_server.reset()
    store = store_with(tmp_path / "alice", host, ALICE)
    async with RegistryClient(credentials=store) as client:
        assert await client.tags(ref(host)) == ["v1"]
        # The client was told its token lasts five minutes, but the registry now refuses
        # it (it trusts another key). The client must notice the 401 and fetch a fresh
        # token instead of failing.
        token_registry.rotate_key(second_signing_key)
        assert await client.tags(ref(host)) == ["v1"]
    assert token_server.token_count == 2


# -- refusals ------------------------------------------------------------------------------


async def test_bob_pulls_but_cannot_push(
    token_registry: TokenAuthDistribution, token_server: TokenServer, tmp_path: Path
) -> None:
    host = token_registry.host
    image = await alice_pushes(host, tmp_path)
    store = store_with(tmp_path / "bob", host, BOB)
    async with RegistryClient(credentials=store) as client:
        assert await client.tags(ref(host)) == ["v1"]
        assert (await client.get_manifest(ref(host, "v1"))).data == image.data
        with pytest.raises(AuthError) as caught:
            await content.push_image(client, host, REPO, "bobs")
    error = caught.value
    assert error.status == 401
    assert error.code == "UNAUTHORIZED"
    assert error.method == "POST"
    assert error.url == f"http://{host}/v2/{REPO}/blobs/uploads/"
    # Bob was authenticated and got a token; it just did not grant push.
    bobs = [r for r in token_server.issued() if r.account == "bob"]
    assert bobs
    assert all(entry["actions"] == ["pull"] for r in bobs for entry in r.granted)
    assert token_server.refused() == []


def test_bob_cannot_delete_from_the_cli(
    cli: Cli, token_registry: TokenAuthDistribution, tmp_path: Path
) -> None:
    host = token_registry.host
    image = push_as_alice(host, tmp_path)
    login_default(host, BOB)
    assert cli("digest", f"{host}/{REPO}:v1").out.strip() == str(image.digest)
    result = cli("rm", f"{host}/{REPO}@{image.digest}")
    assert_one_line_error(
        result,
        f"DELETE http://{host}/v2/{REPO}/manifests/{image.digest}",
        "HTTP 401",
        "UNAUTHORIZED",
        f"regctl login {host}",
    )
    # Still there.
    assert cli("digest", f"{host}/{REPO}:v1").code == 0


async def test_anonymous_client_is_refused(
    token_registry: TokenAuthDistribution, token_server: TokenServer, tmp_path: Path
) -> None:
    host = token_registry.host
    await alice_pushes(host, tmp_path)
    token_server.reset()
    async with RegistryClient(credentials=CredentialStore(tmp_path / "nobody")) as client:
        with pytest.raises(AuthError) as caught:
            await client.tags(ref(host))
    assert caught.value.status == 401
    assert caught.value.url == f"http://{host}/v2/{REPO}/tags/list"
    # The token server was asked anonymously and granted nothing.
    assert token_server.issued()
    assert all(r.account is None and r.granted == () for r in token_server.issued())


def test_anonymous_cli_is_refused(cli: Cli, token_registry: TokenAuthDistribution) -> None:
    host = token_registry.host
    assert_one_line_error(
        cli("ls", f"{host}/{REPO}"), "HTTP 401", "UNAUTHORIZED", host, f"regctl login {host}"
    )


def test_wrong_password_is_a_one_line_auth_error(
    cli: Cli, token_registry: TokenAuthDistribution, token_server: TokenServer
) -> None:
    host = token_registry.host
    login_default(host, Credentials("alice", "not-her-password"))
    line = assert_one_line_error(cli("ls", f"{host}/{REPO}"), "HTTP 401", "regctl login")
    # The refusal came from the token server, not from the registry.
    assert [(r.account, r.status) for r in token_server.history()] == [("alice", 401)]
    assert "incorrect username or password" in line


def test_wrong_password_error_points_at_the_registry(
    cli: Cli, token_registry: TokenAuthDistribution
) -> None:
    host = token_registry.host
    login_default(host, Credentials("alice", "not-her-password"))
    assert_one_line_error(cli("ls", f"{host}/{REPO}"), host, f"regctl login {host})")


# -- login, logout, copy -------------------------------------------------------------------


def test_login_ls_logout(
    cli: Cli,
    token_registry: TokenAuthDistribution,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = token_registry.host
    image = push_as_alice(host, tmp_path)
    config = tmp_path / "docker-config" / "config.json"

    monkeypatch.setattr("sys.stdin", io.StringIO("not-her-password\n"))
    wrong = cli("login", host, "-u", "alice", "--password-stdin")
    assert_one_line_error(wrong, f"login to {host} failed: wrong user name or password")
    assert not config.exists()

    monkeypatch.setattr("sys.stdin", io.StringIO("secret\n"))
    good = cli("login", host, "-u", "alice", "--password-stdin")
    assert good.code == 0, good
    assert host in json.loads(config.read_text())["auths"]

    listed = cli("ls", f"{host}/{REPO}", "--json")
    assert listed.code == 0, listed
    assert [(row["tag"], row["digest"]) for row in listed.json()["tags"]] == [
        ("v1", str(image.digest))
    ]
    assert cli("ls", host, "-q").out.split() == [REPO]

    assert cli("logout", host).code == 0
    assert host not in json.loads(config.read_text())["auths"]
    assert_one_line_error(cli("ls", f"{host}/{REPO}"), "HTTP 401", f"regctl login {host}")


def test_copy_from_plain_distribution_into_token_auth(
    cli: Cli,
    distribution_registry: DistributionServer,
    token_registry: TokenAuthDistribution,
    token_server: TokenServer,
    tmp_path: Path,
) -> None:
    src, dst = distribution_registry.host, token_registry.host
    big = os.urandom(MONOLITHIC_LIMIT + 777)

    async def build() -> content.Pushed:
        async with RegistryClient() as client:
            return await content.push_image(
                client, src, "library/app", "1.0", layers=[b"small layer", big]
            )

    image = trio.run(build)
    login_default(dst, ALICE)
    result = cli("copy", f"{src}/library/app:1.0", f"{dst}/mirror/app", "--json")
    assert result.code == 0, result
    assert result.json()["digest"] == str(image.digest)

    async def read_back() -> tuple[bytes, bytes]:
        store = store_with(tmp_path / "alice", dst, ALICE)
        async with RegistryClient(credentials=store) as client:
            fetched = await client.get_manifest(ref(dst, "1.0", "mirror/app"))
            blob = await client.get_blob(ref(dst, Digest.of(big), "mirror/app"))
            return fetched.data, blob

    data, blob = trio.run(read_back)
    assert data == image.data
    assert Digest.of(data) == image.digest
    assert blob == big
    assert {r.account for r in token_server.issued()} == {"alice"}


# -- identity tokens -----------------------------------------------------------------------


async def test_identity_token_from_docker_login(
    token_registry: TokenAuthDistribution, token_server: TokenServer, tmp_path: Path
) -> None:
    host = token_registry.host
    await alice_pushes(host, tmp_path)
    token_server.refresh_tokens["alice-refresh-token"] = "alice"
    # What `docker login` writes when the token server hands out a refresh token: the
    # user name with an empty password, and the refresh token beside it.
    directory = tmp_path / "identity"
    directory.mkdir()
    auth = base64.b64encode(b"alice:").decode()
    entry = {"auth": auth, "identitytoken": "alice-refresh-token"}
    (directory / "config.json").write_text(json.dumps({"auths": {host: entry}}))
    store = CredentialStore(directory)
    assert store.get(host) == Credentials("alice", "", "alice-refresh-token")
    async with RegistryClient(credentials=store) as client:
        assert await client.tags(ref(host)) == ["v1"]
