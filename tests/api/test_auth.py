"""Authentication and access control at the HTTP edge, in-process, on both dispatchers.

Every refusal is 401, 403 or 429 with the spec's error body and challenge, and leaves the
registry as it was.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from regd.app import create_app
from regd.auth import KeyRing, hash_password
from regd.auth.revocation import SETTLE
from regd.clock import SYSTEM_CLOCK, ManualClock
from regd.config import Config
from regd.metadata import MetadataStore, sqlite_url
from regd.metadata import accounts as rows
from regd.registry import Registry
from regd.storage import FilesystemDriver
from tests.helpers.inprocess import digest_of, image_manifest

ACCESS = (
    {"who": "anonymous", "repositories": "public/**", "actions": "pull"},
    {"who": "authenticated", "repositories": "{user}/**", "actions": ["pull", "push", "delete"]},
    {"who": "group:dev", "repositories": "team/**", "actions": ["pull", "push"]},
    {"who": "alice", "actions": ["catalog"]},
    {"who": "bob", "repositories": "shared/*", "actions": ["pull"]},
    {"who": "root", "actions": ["admin"]},
    {"who": "root", "repositories": "public/**", "actions": ["push"]},
)
ADMIN_TOKEN = "an-admin-token-for-tests"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ALICE = basic("alice", "alice-pw")
BOB = basic("bob", "bob-pw")
ROOT = basic("root", "root-pw")


@asynccontextmanager
async def _serving(registry: Registry, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    for name, groups in (("alice", ["dev"]), ("bob", []), ("root", [])):
        hashed = await hash_password(f"{name}-pw", rounds=4)
        await rows.add_account(registry.metadata, name, hashed, groups, time.time())
    config = Config(
        access_log=False,
        upload_purge_interval=0,
        data_dir=tmp_path,
        access=ACCESS,
        admin_token=ADMIN_TOKEN,
    )
    app = create_app(registry, config)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as c:
        yield c


@pytest.fixture
async def client(registry: Registry, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _serving(registry, tmp_path) as c:
        yield c


@pytest.fixture
async def clocked(
    tmp_path: Path, database_url: str | None
) -> AsyncIterator[tuple[httpx.AsyncClient, ManualClock]]:
    """`client`, on a clock the test moves: what a disabled account issued just after the
    change stays void for SETTLE seconds, which a test should not sleep through."""
    clock = ManualClock(time.time())
    store = MetadataStore(database_url or sqlite_url(tmp_path / "regd.db"), clock=clock)
    store.create_schema()
    registry = Registry.create(FilesystemDriver(tmp_path / "blobs"), store, clock=clock)
    try:
        async with _serving(registry, tmp_path) as c:
            yield c, clock
    finally:
        await registry.aclose()


def refusal(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"errors"}, body
    entry: dict[str, Any] = body["errors"][0]
    assert entry["code"] == code
    assert entry["message"]
    return entry


def challenge(r: httpx.Response) -> str:
    value: str = r.headers["WWW-Authenticate"]
    assert value.startswith('Bearer realm="http://regd/auth/token",service="regd"'), value
    return value


async def token_for(client: httpx.AsyncClient, creds: dict[str, str], *scopes: str) -> str:
    r = await client.get(
        "/auth/token", params=[("service", "regd")] + [("scope", s) for s in scopes], headers=creds
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


async def push_image(
    client: httpx.AsyncClient, repo: str, tag: str, creds: dict[str, str], seed: str = "x"
) -> httpx.Response:
    """Push blobs and a manifest; the manifest PUT's answer."""
    config = json.dumps({"seed": seed}).encode()
    layer = f"layer {seed}".encode()
    for data in (config, layer):
        r = await client.post(
            f"/v2/{repo}/blobs/uploads/",
            params={"digest": digest_of(data)},
            content=data,
            headers=creds,
        )
        if r.status_code != 201:
            return r
    payload = image_manifest((digest_of(config), len(config)), [(digest_of(layer), len(layer))])
    return await client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=payload,
        headers={**creds, "Content-Type": MANIFEST},
    )


async def test_version_check_challenges_until_logged_in(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/")
    refusal(r, 401, "UNAUTHORIZED")
    assert challenge(r) == 'Bearer realm="http://regd/auth/token",service="regd"'
    assert (await client.get("/v2/", headers=ALICE)).status_code == 200
    token = await token_for(client, ALICE)
    assert (await client.get("/v2/", headers=bearer(token))).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        basic("alice", "wrong"),
        basic("nobody", "whatever"),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Digest username=alice"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Bearer " + "A" * 100_000},
    ],
    ids=[
        "wrong-password",
        "unknown-account",
        "garbled-basic",
        "basic-without-colon",
        "unknown-scheme",
        "empty-bearer",
        "garbled-bearer",
        "oversized",
    ],
)
async def test_bad_credentials_are_401_on_every_route(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    # Direct (blobs, manifests, uploads) and Quart (version, tags, catalog, admin) routes.
    for method, path in (
        ("GET", "/v2/"),
        ("GET", "/v2/alice/app/manifests/latest"),
        ("HEAD", f"/v2/alice/app/blobs/{digest_of(b'x')}"),
        ("POST", "/v2/alice/app/blobs/uploads/"),
        ("GET", "/v2/alice/app/tags/list"),
        ("GET", "/v2/_catalog"),
        ("GET", "/admin/v1/users"),
    ):
        r = await client.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")
        if method != "HEAD":
            refusal(r, 401, "UNAUTHORIZED")
    assert (await client.get("/v2/alice/app/tags/list", headers=ALICE)).status_code == 404


async def test_push_where_allowed_and_refused_where_not(client: httpx.AsyncClient) -> None:
    assert (await push_image(client, "team/app", "v1", ALICE)).status_code == 201

    r = await push_image(client, "team/app", "v2", BOB)
    entry = refusal(r, 403, "DENIED")
    assert entry["detail"] == [{"Type": "repository", "Name": "team/app", "Action": "push"}]
    assert 'scope="repository:team/app:pull,push"' in challenge(r)
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]

    r = await push_image(client, "team/app", "v2", {})
    refusal(r, 401, "UNAUTHORIZED")
    assert 'scope="repository:team/app:pull,push"' in challenge(r)

    # Nothing changed: v2 is not there, and bob cannot even read team/app.
    tags = await client.get("/v2/team/app/tags/list", headers=ALICE)
    assert tags.json()["tags"] == ["v1"]
    r = await client.get("/v2/team/app/manifests/v1", headers=BOB)
    refusal(r, 403, "DENIED")
    r = await client.delete("/v2/team/app/manifests/v1", headers=ALICE)  # dev may not delete
    refusal(r, 403, "DENIED")
    assert (await client.get("/v2/team/app/manifests/v1", headers=ALICE)).status_code == 200


async def test_token_flow_and_token_limits(client: httpx.AsyncClient) -> None:
    assert (await push_image(client, "team/app", "v1", ALICE)).status_code == 201
    pull = await token_for(client, ALICE, "repository:team/app:pull")
    assert (await client.get("/v2/team/app/manifests/v1", headers=bearer(pull))).status_code == 200
    assert (await client.get("/v2/team/app/tags/list", headers=bearer(pull))).status_code == 200

    # A pull token used to push, and a token for another repository.
    r = await push_image(client, "team/app", "v2", bearer(pull))
    refusal(r, 403, "DENIED")
    r = await client.get("/v2/team/other/manifests/v1", headers=bearer(pull))
    refusal(r, 403, "DENIED")
    assert 'scope="repository:team/other:pull"' in challenge(r)

    # Asking for more than allowed is granted the intersection, never an error.
    mixed = await token_for(client, BOB, "repository:team/app:pull,push", "repository:bob/x:push")
    claims = jwt.decode(mixed, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "bob/x", "actions": ["push"]}]
    assert (await push_image(client, "bob/x", "v1", bearer(mixed))).status_code == 201

    # The POST form docker uses with identity tokens.
    r = await client.post(
        "/auth/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "alice-pw",
            "service": "regd",
            "scope": "repository:team/app:pull",
        },
    )
    assert r.status_code == 200, r.text
    refreshed = await client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": r.json()["refresh_token"],
            "service": "regd",
            "scope": "repository:team/app:pull",
        },
    )
    assert refreshed.status_code == 200
    token = refreshed.json()["access_token"]
    assert (await client.get("/v2/team/app/manifests/v1", headers=bearer(token))).status_code == 200


def _forge(keys: KeyRing, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "regd",
        "sub": "alice",
        "aud": "regd",
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "forged",
        "access": [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}],
    }
    headers = {"kid": changes.pop("kid", keys.current.kid)}
    claims.update(changes)
    return jwt.encode(claims, keys.current.private_key, algorithm="ES256", headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_bad_tokens_are_401_invalid_token(client: httpx.AsyncClient, tmp_path: Path) -> None:
    keys = KeyRing.open(tmp_path / "auth", "regd", SYSTEM_CLOCK)
    good = _forge(keys)
    assert (await client.get("/v2/alice/app/tags/list", headers=bearer(good))).status_code == 404
    head, payload, signature = good.split(".")
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    now = int(time.time())
    bad = {
        "bad-signature": f"{head}.{payload}.{flipped}",
        "alg-none": _b64(json.dumps({"alg": "none", "kid": keys.current.kid}).encode())
        + f".{payload}.",
        "expired": _forge(keys, exp=now - 600, nbf=now - 900, iat=now - 900),
        "not-yet-valid": _forge(keys, nbf=now + 600, iat=now + 600),
        "wrong-audience": _forge(keys, aud="another-registry"),
        "wrong-issuer": _forge(keys, iss="someone-else"),
        "unknown-kid": _forge(keys, kid="ABCD:EFGH:IJKL:MNOP:QRST:UVWX:YZ23:4567:ABCD:EFGH:IJKL"),
    }
    for name, token in bad.items():
        r = await push_image(client, "alice/app", "v1", bearer(token))
        refusal(r, 401, "UNAUTHORIZED")
        assert 'error="invalid_token"' in challenge(r), name
    assert (await client.get("/v2/alice/app/tags/list", headers=ALICE)).status_code == 404


@pytest.mark.parametrize(
    "scope",
    [
        "repository:../etc/passwd:pull",
        "repository:team/../alice/app:push",
        "repository:/team/app:pull",
        "repository:team//app:pull",
        "repository:Team/App:pull",
        "repository:team/app%2f..:pull",
        "registry:everything:*",
        "repository:team/app",
    ],
)
async def test_token_requests_with_path_tricks_are_denied(
    client: httpx.AsyncClient, scope: str
) -> None:
    r = await client.get("/auth/token", params={"service": "regd", "scope": scope}, headers=ALICE)
    refusal(r, 403, "DENIED")


async def test_a_token_request_for_1000_scopes_is_denied(client: httpx.AsyncClient) -> None:
    scopes = [("scope", f"repository:alice/r{i}:pull") for i in range(1000)]
    r = await client.get("/auth/token", params=[("service", "regd"), *scopes], headers=ALICE)
    refusal(r, 403, "DENIED")
    r = await client.post(
        "/auth/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": "alice-pw",
            "scope": " ".join(v for _, v in scopes),
        },
    )
    refusal(r, 403, "DENIED")


async def test_token_service_refuses_bad_credentials(client: httpx.AsyncClient) -> None:
    r = await client.get("/auth/token", params={"service": "regd"}, headers=basic("alice", "x"))
    refusal(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
    r = await client.get("/auth/token", params={"service": "other"}, headers=ALICE)
    refusal(r, 403, "DENIED")
    r = await client.post("/auth/token", data={"grant_type": "password", "username": "alice"})
    refusal(r, 401, "UNAUTHORIZED")
    r = await client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": "x"})
    refusal(r, 401, "UNAUTHORIZED")
    r = await client.post("/auth/token", content=b"x" * 70_000)
    assert r.status_code == 400


async def test_failed_logins_are_throttled(client: httpx.AsyncClient) -> None:
    wrong = basic("alice", "guess")
    for _ in range(10):
        refusal(await client.get("/v2/", headers=wrong), 401, "UNAUTHORIZED")
    r = await client.get("/v2/", headers=wrong)
    refusal(r, 429, "TOOMANYREQUESTS")
    assert int(r.headers["Retry-After"]) > 0
    r = await client.get("/auth/token", params={"service": "regd"}, headers=wrong)
    refusal(r, 429, "TOOMANYREQUESTS")


async def test_catalog_needs_the_right_and_lists_only_pullable(
    client: httpx.AsyncClient,
) -> None:
    for repo, creds in (
        ("alice/a", ALICE),
        ("bob/b", BOB),
        ("team/t1", ALICE),
        ("alice/z", ALICE),
        ("team/t2", ALICE),
    ):
        assert (await push_image(client, repo, "v1", creds)).status_code == 201
    r = await client.get("/v2/_catalog", headers=BOB)
    entry = refusal(r, 403, "DENIED")
    assert entry["detail"] == [{"Type": "registry", "Name": "catalog", "Action": "*"}]
    assert 'scope="registry:catalog:*"' in challenge(r)
    refusal(await client.get("/v2/_catalog"), 401, "UNAUTHORIZED")

    r = await client.get("/v2/_catalog", headers=ALICE)
    visible = ["alice/a", "alice/z", "team/t1", "team/t2"]
    assert r.json()["repositories"] == visible
    # n counts visible repositories: each page is full and the Link carries on.
    seen: list[str] = []
    url = "/v2/_catalog?n=1"
    while url:
        r = await client.get(url, headers=ALICE)
        items = r.json()["repositories"]
        assert len(items) == 1
        seen += items
        link = r.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""
    assert seen == visible
    r = await client.get("/v2/_catalog", params={"n": 3, "last": "alice/a"}, headers=ALICE)
    assert r.json()["repositories"] == ["alice/z", "team/t1", "team/t2"]
    assert "Link" not in r.headers


async def test_referrers_and_tags_need_pull(client: httpx.AsyncClient) -> None:
    r = await push_image(client, "alice/app", "v1", ALICE)
    digest = r.headers["Docker-Content-Digest"]
    ok = await client.get(f"/v2/alice/app/referrers/{digest}", headers=ALICE)
    assert ok.status_code == 200
    for path in (f"/v2/alice/app/referrers/{digest}", "/v2/alice/app/tags/list"):
        entry = refusal(await client.get(path, headers=BOB), 403, "DENIED")
        assert entry["detail"] == [{"Type": "repository", "Name": "alice/app", "Action": "pull"}]


async def test_mounts_reveal_nothing_the_caller_may_not_pull(client: httpx.AsyncClient) -> None:
    secret = b"bob's private layer"
    digest = digest_of(secret)
    r = await client.post(
        "/v2/bob/private/blobs/uploads/", params={"digest": digest}, content=secret, headers=BOB
    )
    assert r.status_code == 201
    # From a repository alice may not pull, and automatically (no `from`): an upload session.
    for params in ({"mount": digest, "from": "bob/private"}, {"mount": digest}):
        r = await client.post("/v2/alice/app/blobs/uploads/", params=params, headers=ALICE)
        assert r.status_code == 202, (params, r.text)
    assert (await client.head(f"/v2/alice/app/blobs/{digest}", headers=ALICE)).status_code == 404

    # A blob alice can read (in team/): mounted, with and without `from`.
    shared = b"a team layer"
    d2 = digest_of(shared)
    r = await client.post(
        "/v2/team/base/blobs/uploads/", params={"digest": d2}, content=shared, headers=ALICE
    )
    assert r.status_code == 201
    r = await client.post("/v2/alice/one/blobs/uploads/", params={"mount": d2}, headers=ALICE)
    assert r.status_code == 201
    r = await client.post(
        "/v2/alice/two/blobs/uploads/",
        params={"mount": d2, "from": "team/base"},
        headers=ALICE,
    )
    assert r.status_code == 201


async def test_admin_api_needs_the_admin_right(client: httpx.AsyncClient) -> None:
    # The in-process client is a loopback address: that grants nothing once auth is on.
    refusal(await client.get("/admin/v1/usage"), 401, "UNAUTHORIZED")
    r = await client.get("/admin/v1/usage", headers=ALICE)
    refusal(r, 403, "DENIED")
    assert (await client.get("/admin/v1/usage", headers=ROOT)).status_code == 200
    # admin_token: the admin API, and nothing else.
    assert (await client.get("/admin/v1/usage", headers=bearer(ADMIN_TOKEN))).status_code == 200
    refusal(await client.get("/v2/", headers=bearer(ADMIN_TOKEN)), 401, "UNAUTHORIZED")
    r = await client.get("/admin/v1/usage", headers=bearer(ADMIN_TOKEN + "x"))
    refusal(r, 401, "UNAUTHORIZED")


async def test_every_spelling_of_an_admin_path_needs_the_admin_right(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/admin/v1/usage/", "//admin/v1/usage", "/admin//v1/usage", "/metrics/"):
        refusal(await client.get(path), 401, "UNAUTHORIZED")
        r = await client.get(path, headers=ALICE)
        assert r.status_code in (403, 404), (path, r.status_code, r.text[:200])
        assert "regd_" not in r.text, path
    assert (await client.get("/metrics/", headers=ROOT)).status_code == 200


async def test_accounts_tokens_and_audit(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/admin/v1/users",
        json={"name": "carol", "password": "carol-pw", "groups": ["dev"]},
        headers=ROOT,
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"name": "carol", "groups": ["dev"], "restart": False}
    dup = await client.post(
        "/admin/v1/users", json={"name": "carol", "password": "x"}, headers=ROOT
    )
    assert dup.status_code == 409
    bad = await client.post("/admin/v1/users", json={"name": "../x", "password": "x"}, headers=ROOT)
    assert bad.status_code == 400
    users = (await client.get("/admin/v1/users", headers=ROOT)).json()["users"]
    assert [u["name"] for u in users] == ["alice", "bob", "carol", "root"]
    assert "password_hash" not in users[0]
    carol = basic("carol", "carol-pw")
    assert (await push_image(client, "team/app", "v1", carol)).status_code == 201

    r = await client.put(
        "/admin/v1/users/carol/password", json={"password": "new-pw"}, headers=ROOT
    )
    assert r.status_code == 200
    refusal(await client.get("/v2/", headers=carol), 401, "UNAUTHORIZED")
    assert (await client.get("/v2/", headers=basic("carol", "new-pw"))).status_code == 200
    r = await client.put("/admin/v1/users/carol/groups", json={"groups": []}, headers=ROOT)
    assert r.json() == {"name": "carol", "groups": []}
    refusal(await push_image(client, "team/app", "v2", basic("carol", "new-pw")), 403, "DENIED")

    # A machine token, used as a password; its secret is shown once.
    r = await client.post(
        "/admin/v1/tokens",
        json={"owner": "alice", "name": "ci", "scopes": ["repository:team/*:pull"]},
        headers=ROOT,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["secret"]
    ci = basic("ci", secret)
    assert (await client.get("/v2/team/app/manifests/v1", headers=ci)).status_code == 200
    refusal(await push_image(client, "team/app", "v3", ci), 403, "DENIED")  # pull-only token
    listed = (await client.get("/admin/v1/tokens", headers=ROOT)).json()["tokens"]
    assert [t["name"] for t in listed] == ["ci"]
    assert "secret" not in listed[0]
    r = await client.delete(f"/admin/v1/tokens/{created['id']}", headers=ROOT)
    assert r.status_code == 200
    assert (
        await client.delete(f"/admin/v1/tokens/{created['id']}", headers=ROOT)
    ).status_code == 404
    refusal(await client.get("/v2/", headers=basic("ci", secret + "x")), 401, "UNAUTHORIZED")

    assert (await client.delete("/admin/v1/users/carol", headers=ROOT)).status_code == 200
    assert (await client.delete("/admin/v1/users/carol", headers=ROOT)).status_code == 404
    refusal(await client.get("/v2/", headers=basic("carol", "new-pw")), 401, "UNAUTHORIZED")

    # The audit trail: who pushed, tagged and deleted what, and the failed logins.
    assert (await push_image(client, "alice/app", "v1", ALICE)).status_code == 201
    assert (await client.delete("/v2/alice/app/manifests/v1", headers=ALICE)).status_code == 202
    r = await client.delete("/admin/v1/repositories/alice/app", headers=ROOT)
    assert r.status_code == 200
    r = await client.get("/admin/v1/audit", params={"repository": "alice/app"}, headers=ROOT)
    records = r.json()["records"]
    assert [(x["actor"], x["action"], x["reference"], x["outcome"]) for x in records] == [
        ("alice", "push", "v1", "success"),
        ("alice", "delete-tag", "v1", "success"),
        ("root", "delete-repository", None, "success"),
    ]
    assert records[0]["remote_addr"] == "127.0.0.1"
    everything = (await client.get("/admin/v1/audit", params={"since": "1h"}, headers=ROOT)).json()
    failures = [x for x in everything["records"] if x["action"] == "login"]
    assert failures
    assert all(x["outcome"] == "failure" for x in failures)
    assert all("new-pw" not in json.dumps(x) for x in everything["records"])
    r = await client.get("/admin/v1/audit", params={"limit": "0"}, headers=ROOT)
    assert r.status_code == 400
    # Only the admin right reads it.
    refusal(await client.get("/admin/v1/audit", headers=ALICE), 403, "DENIED")


async def test_a_disabled_account_is_refused_until_enabled(
    clocked: tuple[httpx.AsyncClient, ManualClock],
) -> None:
    client, clock = clocked
    path = "/admin/v1/users/alice/disabled"
    held = await token_for(client, ALICE, "repository:alice/app:pull")
    assert (await client.get("/v2/", headers=ALICE)).status_code == 200  # remembered
    assert (await client.get("/v2/", headers=bearer(held))).status_code == 200

    r = await client.put(path, json={"disabled": True}, headers=ROOT)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "alice", "disabled": True}
    refusal(await client.get("/v2/", headers=ALICE), 401, "UNAUTHORIZED")
    refusal(await client.get("/v2/", headers=bearer(held)), 401, "UNAUTHORIZED")
    refusal(
        await client.get("/auth/token", params={"service": "regd"}, headers=ALICE),
        401,
        "UNAUTHORIZED",
    )
    users = (await client.get("/admin/v1/users", headers=ROOT)).json()["users"]
    assert {u["name"]: u["disabled"] for u in users} == {
        "alice": True,
        "bob": False,
        "root": False,
    }

    # Required and a boolean: a body that is not cannot enable the account by accident.
    for body in ({}, {"disabled": "false"}, {"disabled": 0}, {"disabled": None}):
        refusal(await client.put(path, json=body, headers=ROOT), 400, "UNSUPPORTED")
    refusal(await client.put(path, content=b"[false]", headers=ROOT), 400, "UNSUPPORTED")
    refusal(await client.get("/v2/", headers=ALICE), 401, "UNAUTHORIZED")
    unknown = await client.put(
        "/admin/v1/users/ghost/disabled", json={"disabled": True}, headers=ROOT
    )
    assert "ghost" in refusal(unknown, 404, "NAME_UNKNOWN")["message"]
    refusal(await client.put(path, json={"disabled": False}, headers=ALICE), 401, "UNAUTHORIZED")
    refusal(await client.put(path, json={"disabled": False}, headers=BOB), 403, "DENIED")

    r = await client.put(path, json={"disabled": False}, headers=ROOT)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "alice", "disabled": False}
    assert (await client.get("/v2/", headers=ALICE)).status_code == 200
    # Tokens issued up to SETTLE after the disabling are void wherever they were issued.
    clock.advance(SETTLE + 1)
    fresh = await token_for(client, ALICE, "repository:alice/app:pull")
    assert (await client.get("/v2/", headers=bearer(fresh))).status_code == 200
    assert (await client.get("/v2/", headers=ALICE)).status_code == 200
    # The token held from before stays refused: enabling revives no old credential.
    refusal(await client.get("/v2/", headers=bearer(held)), 401, "UNAUTHORIZED")
    users = (await client.get("/admin/v1/users", headers=ROOT)).json()["users"]
    assert not any(u["disabled"] for u in users)


async def test_anonymous_pull_where_the_policy_allows(client: httpx.AsyncClient) -> None:
    assert (await push_image(client, "public/app", "v1", ROOT)).status_code == 201
    assert (await client.get("/v2/public/app/manifests/v1")).status_code == 200
    token = await token_for(client, {}, "repository:public/app:pull,push")
    assert (
        await client.get("/v2/public/app/manifests/v1", headers=bearer(token))
    ).status_code == 200
    refusal(await push_image(client, "public/app", "v2", {}), 401, "UNAUTHORIZED")
    refusal(await push_image(client, "public/app", "v2", bearer(token)), 403, "DENIED")
    refusal(await client.get("/v2/private/app/tags/list"), 401, "UNAUTHORIZED")


async def test_keys_are_published(client: httpx.AsyncClient) -> None:
    jwks = (await client.get("/auth/jwks.json")).json()
    assert jwks["keys"]
    assert jwks["keys"][0]["kid"]
    pem = await client.get("/auth/certs.pem")
    assert pem.text.startswith("-----BEGIN CERTIFICATE-----")


async def test_a_fresh_install_is_open_until_an_account_exists(
    registry: Registry, tmp_path: Path
) -> None:
    config = Config(access_log=False, upload_purge_interval=0, data_dir=tmp_path)
    transport = httpx.ASGITransport(app=create_app(registry, config))
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as open_client:
        assert (await open_client.get("/v2/")).status_code == 200
        assert (await open_client.get("/auth/token")).status_code == 404
        r = await open_client.post(
            "/admin/v1/users", json={"name": "root", "password": "root-pw", "groups": ["admin"]}
        )
        assert r.status_code == 201
        assert r.json()["restart"] is True
    # After the restart: the default policy, and the admin group has the admin API.
    transport = httpx.ASGITransport(app=create_app(registry, config))
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as restarted:
        refusal(await restarted.get("/v2/"), 401, "UNAUTHORIZED")
        assert (await push_image(restarted, "any/repo", "v1", ROOT)).status_code == 201
        catalog = await restarted.get("/v2/_catalog", headers=ROOT)
        assert catalog.json()["repositories"] == ["any/repo"]
        assert (await restarted.get("/admin/v1/users", headers=ROOT)).status_code == 200
        refusal(await restarted.get("/admin/v1/users"), 401, "UNAUTHORIZED")
