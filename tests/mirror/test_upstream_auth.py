"""A mirror of an upstream that wants credentials: Basic (htpasswd) and Docker's token
handshake, answered with the credentials of the `[[mirror]]` table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.helpers.clients import Skopeo
from tests.helpers.http_api import MANIFEST_ACCEPT
from tests.helpers.oci import LayoutImage
from tests.helpers.reference import require_distribution
from tests.helpers.servers import ServerStartError
from tests.helpers.token_server import SigningKey, TokenAuthDistribution, TokenServer
from tests.mirror.conftest import mirror_table, start_regd, start_upstream


def _pull_and_compare(skopeo: Skopeo, regd_host: str, name: str, image: LayoutImage) -> None:
    raw = skopeo.inspect_raw(f"docker://{regd_host}/{name}")
    assert raw == image.layout.joinpath("blobs", *image.digest.split(":")).read_bytes()
    skopeo.copy(f"docker://{regd_host}/{name}", "oci:" + str(skopeo.scratch / "out") + ":x")


def _refusal(regd_url: str, name: str) -> str:
    answer = httpx.get(
        f"{regd_url}/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}, timeout=60
    )
    assert answer.status_code == 503, answer.text
    message: str = answer.json()["errors"][0]["message"]
    return message


def test_basic_credentials_from_the_mirror_table(
    tmp_path: Path, skopeo: Skopeo, small_image: LayoutImage
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        f"alice:{bcrypt.hashpw(b'right-password', bcrypt.gensalt(rounds=4)).decode()}\n"
    )
    upstream = start_upstream(
        tmp_path / "upstream",
        f"auth:\n  htpasswd:\n    realm: mirror-tests\n    path: {htpasswd}\n",
    )
    try:
        skopeo.copy(
            small_image.ref,
            f"docker://{upstream.host}/lib/basic:v1",
            "--dest-creds",
            "alice:right-password",
        )
        regd = start_regd(
            tmp_path / "regd",
            mirror_table(
                "up", upstream.url, username="alice", password="right-password", default=True
            )
            + mirror_table("anon", upstream.url),
        )
        try:
            _pull_and_compare(skopeo, regd.host, "up/lib/basic:v1", small_image)
            # The default mirror: a prefix-less name, as docker's registry-mirrors asks.
            _pull_and_compare(skopeo, regd.host, "lib/basic:v1", small_image)
            assert f"upstream {upstream.url} (mirror anon)" in _refusal(regd.url, "anon/lib/basic")
        finally:
            regd.stop()
    finally:
        upstream.stop()


@pytest.fixture
def token_upstream(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TokenServer, TokenAuthDistribution]]:
    require_distribution()
    key = SigningKey.generate(tmp_path_factory.mktemp("mirror-token-key"))
    tokens = TokenServer(key)
    tokens.start()
    scratch = tmp_path_factory.mktemp("mirror-token-upstream")
    upstream = TokenAuthDistribution(root=scratch / "root", scratch=scratch, token_server=tokens)
    try:
        upstream.start()
    except ServerStartError as exc:
        tokens.stop()
        pytest.fail(str(exc), pytrace=False)
    yield tokens, upstream
    upstream.stop()
    tokens.stop()


def test_token_handshake_with_a_pull_only_account(
    token_upstream: tuple[TokenServer, TokenAuthDistribution],
    tmp_path: Path,
    skopeo: Skopeo,
    small_image: LayoutImage,
) -> None:
    tokens, upstream = token_upstream
    skopeo.copy(
        small_image.ref, f"docker://{upstream.host}/lib/token:v1", "--dest-creds", "alice:secret"
    )
    tokens.reset()
    # bob may only pull: all a mirror needs.
    regd = start_regd(
        tmp_path / "regd", mirror_table("up", upstream.url, username="bob", password="bob-secret")
    )
    try:
        _pull_and_compare(skopeo, regd.host, "up/lib/token:v1", small_image)
    finally:
        regd.stop()
    issued = tokens.issued()
    assert issued, "regd never asked the token server"
    assert {request.account for request in issued} == {"bob"}
    assert all(s == "repository:lib/token:pull" for r in issued for s in r.scopes)
