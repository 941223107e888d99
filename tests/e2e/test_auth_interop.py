"""Token interop both ways, with real processes.

(a) Distribution 2.8 trusts regd's token service (realm, service, issuer and the
    `rootcertbundle` from regd's `/auth/certs.pem`): skopeo does the token dance through regd
    and pushes to Distribution; a token that grants pull only cannot push.
(b) regd trusts other token services through `[[auth.trust]]`: the test token server by its
    certificate bundle (tokens carry an `x5c` chain), and another regd by its JWKS (tokens
    carry a `kid`). A token is all the rights its bearer has: a token for one repository is
    refused on another with 403 DENIED and `error="insufficient_scope"`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_auth_clients import PASSWORDS, make_htpasswd
from tests.helpers.clients import Skopeo
from tests.helpers.oci import LayoutImage, sha256
from tests.helpers.servers import (
    DistributionServer,
    RegdFactory,
    RegdServer,
    ServerStartError,
    distribution_binary,
)
from tests.helpers.token_server import SigningKey, TokenServer

pytestmark = pytest.mark.e2e

REFUSED = r"(?i)\b403\b|forbidden|denied|\b401\b|unauthorized|insufficient_scope"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

ISSUER = "regd-interop-issuer"
SERVICE = "regd-interop"

REGD_POLICY = """
[auth]
htpasswd = "{htpasswd}"
issuer = "{issuer}"
service = "{service}"

[[access]]
who = "alice"
repositories = ["**"]
actions = ["pull", "push"]

[[access]]
who = "bob"
repositories = ["team/**"]
actions = ["pull"]
"""

DISTRIBUTION_TOKEN_AUTH = """\
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
"""


def start_token_regd(
    regd_factory: RegdFactory,
    database_url: str | None,
    scratch: Path,
    *,
    issuer: str = ISSUER,
    service: str = SERVICE,
) -> RegdServer:
    scratch.mkdir(parents=True, exist_ok=True)
    htpasswd = scratch / "htpasswd"
    make_htpasswd(htpasswd, {"alice": PASSWORDS["alice"], "bob": PASSWORDS["bob"]})
    config = scratch / "regd.toml"
    config.write_text(REGD_POLICY.format(htpasswd=htpasswd, issuer=issuer, service=service))
    return regd_factory(database_url=database_url, extra_args=["--config", str(config)])


def regd_token(server: RegdServer, user: str, scope: str, service: str = SERVICE) -> str:
    answer = httpx.get(
        f"{server.url}/auth/token",
        params={"service": service, "scope": scope},
        auth=(user, PASSWORDS[user]),
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


# -- (a) Distribution trusts regd -----------------------------------------------------------


@pytest.fixture
def regd_and_distribution(
    regd_factory: RegdFactory,
    database_url: str | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegdServer, DistributionServer]]:
    if distribution_binary() is None:
        pytest.fail("docker-registry (Distribution) is not installed; run scripts/setup")
    regd = start_token_regd(regd_factory, database_url, tmp_path_factory.mktemp("regd-issuer"))
    scratch = tmp_path_factory.mktemp("distribution-regd-auth")
    bundle = scratch / "regd-certs.pem"
    answer = httpx.get(f"{regd.url}/auth/certs.pem", timeout=30.0)
    assert answer.status_code == 200, answer.text
    assert b"BEGIN CERTIFICATE" in answer.content
    bundle.write_bytes(answer.content)
    auth = DISTRIBUTION_TOKEN_AUTH.format(
        realm=f"{regd.url}/auth/token", service=SERVICE, issuer=ISSUER, bundle=bundle
    )
    distribution = DistributionServer(root=scratch / "root", scratch=scratch, extra_config=auth)
    try:
        distribution.start()
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield regd, distribution
    finally:
        distribution.stop()


def test_distribution_accepts_regd_tokens(
    regd_and_distribution: tuple[RegdServer, DistributionServer],
    skopeo: Skopeo,
    oci_image: LayoutImage,
    tmp_path: Path,
) -> None:
    regd, distribution = regd_and_distribution
    host = distribution.host
    with httpx.Client(base_url=distribution.url, timeout=30.0) as http:
        probe = http.get("/v2/")
        assert probe.status_code == 401
        assert f'realm="{regd.url}/auth/token"' in probe.headers["WWW-Authenticate"]

    alice = f"alice:{PASSWORDS['alice']}"
    skopeo.copy(oci_image.ref, f"docker://{host}/team/app:v1", "--dest-creds", alice)
    bob = f"bob:{PASSWORDS['bob']}"
    raw = skopeo.inspect_raw(f"docker://{host}/team/app:v1", "--creds", bob)
    assert sha256(raw) == oci_image.digest
    pulled = tmp_path / "pulled"
    skopeo.copy(f"docker://{host}/team/app:v1", f"oci:{pulled}:v1", "--src-creds", bob)
    assert json.loads((pulled / "index.json").read_text())["manifests"][0]["digest"] == (
        oci_image.digest
    )

    # bob's token grants pull only: Distribution refuses his push.
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.copy(oci_image.ref, f"docker://{host}/team/app:v2", "--dest-creds", bob)
    # A wrong password gets no token from regd, so no access to Distribution either.
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.inspect_raw(f"docker://{host}/team/app:v1", "--creds", "bob:wrong")

    pull_only = regd_token(regd, "bob", "repository:team/app:pull,push")
    with httpx.Client(base_url=distribution.url, timeout=30.0) as http:
        bearer = {"Authorization": f"Bearer {pull_only}"}
        got = http.get("/v2/team/app/manifests/v1", headers={**bearer, "Accept": OCI_MANIFEST})
        assert got.status_code == 200, got.text
        upload = http.post("/v2/team/app/blobs/uploads/", headers=bearer)
        assert upload.status_code == 401, upload.text
        assert 'error="insufficient_scope"' in upload.headers["WWW-Authenticate"]
        put = http.put(
            "/v2/team/app/manifests/v2",
            content=got.content,
            headers={**bearer, "Content-Type": OCI_MANIFEST},
        )
        assert put.status_code == 401, put.text
        # Nothing was pushed under v2.
        v2 = http.head("/v2/team/app/manifests/v2", headers={**bearer, "Accept": OCI_MANIFEST})
        assert v2.status_code == 404
        tags = http.get("/v2/team/app/tags/list", headers=bearer)
        assert tags.json()["tags"] == ["v1"]


# -- (b) regd trusts other token services ---------------------------------------------------


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.generate(tmp_path_factory.mktemp("token-keys"))


@pytest.fixture
def token_server(signing_key: SigningKey) -> Iterator[TokenServer]:
    server = TokenServer(signing_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def external_token(server: TokenServer, user: str, scope: str) -> str:
    answer = httpx.get(
        server.realm,
        params={"service": server.service, "scope": scope},
        auth=(user, server.accounts[user].password),
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def assert_insufficient_scope(answer: httpx.Response) -> None:
    assert answer.status_code == 403, answer.text
    errors = answer.json()["errors"]
    assert errors[0]["code"] == "DENIED"
    assert errors[0]["message"]
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer realm=")
    assert 'error="insufficient_scope"' in challenge


def test_regd_trusts_a_token_server_by_certificate_bundle(
    regd_factory: RegdFactory,
    database_url: str | None,
    token_server: TokenServer,
    skopeo: Skopeo,
    oci_image: LayoutImage,
    tmp_path: Path,
) -> None:
    config = tmp_path / "regd.toml"
    config.write_text(
        f"""
[[auth.trust]]
issuer = "{token_server.issuer}"
service = "{token_server.service}"
certificates = "{token_server.key.cert_path}"
"""
    )
    regd = regd_factory(database_url=database_url, extra_args=["--config", str(config)])
    host = regd.host

    token = external_token(token_server, "alice", "repository:team/app:pull,push")
    skopeo.copy(oci_image.ref, f"docker://{host}/team/app:v1", "--dest-registry-token", token)
    raw = skopeo.inspect_raw(f"docker://{host}/team/app:v1", "--registry-token", token)
    assert sha256(raw) == oci_image.digest

    other = external_token(token_server, "alice", "repository:team/other:pull,push")
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.copy(oci_image.ref, f"docker://{host}/team/app:v2", "--dest-registry-token", other)
    # bob's token grants pull only.
    bob = external_token(token_server, "bob", "repository:team/app:pull,push")
    with httpx.Client(base_url=regd.url, timeout=30.0) as http:
        for bearer in (other, bob):
            headers = {"Authorization": f"Bearer {bearer}"}
            assert_insufficient_scope(http.post("/v2/team/app/blobs/uploads/", headers=headers))
            assert_insufficient_scope(
                http.put(
                    "/v2/team/app/manifests/v2",
                    content=raw,
                    headers={**headers, "Content-Type": OCI_MANIFEST},
                )
            )
        assert_insufficient_scope(
            http.get("/v2/team/app/tags/list", headers={"Authorization": f"Bearer {other}"})
        )
        tags = http.get("/v2/team/app/tags/list", headers={"Authorization": f"Bearer {bob}"})
        assert tags.status_code == 200
        assert tags.json()["tags"] == ["v1"]
        # A token for another service (audience) is not for this registry.
        forged = token_server.key.sign_jwt(
            {
                "iss": token_server.issuer,
                "aud": "some-other-registry",
                "sub": "alice",
                "exp": 4102444800,
                "nbf": 0,
                "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
            }
        )
        assert (
            http.get(
                "/v2/team/app/tags/list", headers={"Authorization": f"Bearer {forged}"}
            ).status_code
            == 401
        )


def test_regd_trusts_another_regd_by_jwks(
    regd_factory: RegdFactory,
    database_url: str | None,
    skopeo: Skopeo,
    oci_image: LayoutImage,
    tmp_path: Path,
) -> None:
    issuing = start_token_regd(
        regd_factory, None, tmp_path / "issuing", issuer="regd-a", service="regd-a"
    )
    jwks = tmp_path / "regd-a.jwks.json"
    answer = httpx.get(f"{issuing.url}/auth/jwks.json", timeout=30.0)
    assert answer.status_code == 200, answer.text
    jwks.write_bytes(answer.content)
    config = tmp_path / "trusting.toml"
    config.write_text(
        f"""
[[auth.trust]]
issuer = "regd-a"
service = "regd-a"
jwks = "{jwks}"
"""
    )
    trusting = regd_factory(database_url=database_url, extra_args=["--config", str(config)])
    host = trusting.host

    token = regd_token(issuing, "alice", "repository:team/app:pull,push", service="regd-a")
    skopeo.copy(oci_image.ref, f"docker://{host}/team/app:v1", "--dest-registry-token", token)
    raw = skopeo.inspect_raw(f"docker://{host}/team/app:v1", "--registry-token", token)
    assert sha256(raw) == oci_image.digest
    other = regd_token(issuing, "alice", "repository:team/other:pull,push", service="regd-a")
    with httpx.Client(base_url=trusting.url, timeout=30.0) as http:
        assert_insufficient_scope(
            http.post("/v2/team/app/blobs/uploads/", headers={"Authorization": f"Bearer {other}"})
        )
        head = http.head(
            "/v2/team/app/manifests/v2",
            headers={"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST},
        )
        assert head.status_code == 404
