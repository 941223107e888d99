"""Fixtures for the auth tests: a metadata store on both backends, keys, an Authenticator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from regd.auth import Authenticator, KeyRing, Policy, TokenIssuer, TokenVerifier
from regd.clock import ManualClock
from regd.metadata import MetadataStore, sqlite_url

ISSUER = "regd-test-issuer"
SERVICE = "registry.test"
REALM = "https://registry.test/token"

POLICY = [
    {"who": "anonymous", "repositories": "public/**", "actions": "pull"},
    {"who": "authenticated", "repositories": "{user}/**", "actions": ["pull", "push", "delete"]},
    {"who": "group:dev", "repositories": "team/*", "actions": ["pull", "push"]},
    {"who": "alice", "actions": ["catalog"]},
]


@pytest.fixture
async def store(
    tmp_path: Path, database_url: str | None, clock: ManualClock
) -> AsyncIterator[MetadataStore]:
    # On the Authenticator's clock: revocations compare the times the store writes with
    # the times tokens and logins were made.
    s = MetadataStore(database_url or sqlite_url(tmp_path / "m.db"), clock=clock)
    s.create_schema()
    yield s
    await s.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def keys(tmp_path: Path, clock: ManualClock) -> KeyRing:
    return KeyRing.open(tmp_path / "auth", ISSUER, clock)


@pytest.fixture
def auth(store: MetadataStore, clock: ManualClock, keys: KeyRing) -> Authenticator:
    return Authenticator(
        store,
        Policy.parse(POLICY),
        clock,
        realm=REALM,
        service=SERVICE,
        issuer=TokenIssuer(keys, ISSUER, clock),
        verifier=TokenVerifier(clock, own=keys, issuer=ISSUER, service=SERVICE),
    )
