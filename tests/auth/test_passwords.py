"""Passwords, htpasswd files, the credential cache and login throttling."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from regd.auth import CredentialCache, LoginThrottle, Throttled, hash_password, load_htpasswd
from regd.auth.passwords import PasswordError, verify_password
from regd.clock import ManualClock
from regd.errors import ConfigError


async def test_hash_and_verify() -> None:
    hashed = await hash_password("s3cret", rounds=4)
    assert hashed.startswith("$2b$04$")
    assert await verify_password("s3cret", hashed)
    assert not await verify_password("s3cret!", hashed)
    assert not await verify_password("s3cret", None)
    assert not await verify_password("x" * 100, hashed)
    with pytest.raises(PasswordError):
        await hash_password("x" * 73)
    with pytest.raises(PasswordError):
        await hash_password("")


def _htpasswd_line(user: str, password: str, prefix: str) -> str:
    # What `htpasswd -B` writes: Apache's bcrypt with the $2y$ prefix.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    return f"{user}:{prefix}{hashed[4:]}"


async def test_htpasswd_bcrypt_entries_are_accepted_as_is(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(
        "# team\n"
        + _htpasswd_line("alice", "pw-a", "$2y$")
        + "\n\n"
        + _htpasswd_line("bob", "pw-b", "$2a$")
        + "\n"
        + _htpasswd_line("carol", "pw-c", "$2b$")
        + "\n"
    )
    users = load_htpasswd(path)
    assert set(users) == {"alice", "bob", "carol"}
    assert await verify_password("pw-a", users["alice"])
    assert await verify_password("pw-b", users["bob"])
    assert not await verify_password("pw-a", users["bob"])


@pytest.mark.parametrize(
    "line",
    [
        "dave:$apr1$abcdefgh$0123456789abcdefghijkl",  # htpasswd -m (MD5)
        "dave:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # htpasswd -s
        "dave:plain",
        "no-colon-here",
    ],
)
def test_htpasswd_other_entries_are_refused_naming_the_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(_htpasswd_line("alice", "pw", "$2y$") + "\n" + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_htpasswd(path)
    assert f"{path}:2:" in str(info.value)
    assert "\n" not in str(info.value)


def test_credential_cache_expires_and_is_bounded() -> None:
    clock = ManualClock()
    cache: CredentialCache[str] = CredentialCache(clock, ttl=60, size=2)
    k1, k2, k3 = cache.key("a", "p"), cache.key("b", "p"), cache.key("c", "p")
    assert cache.key("a", "p") == k1 != cache.key("a", "q")
    cache.put(k1, "alice")
    assert cache.get(k1) == "alice"
    clock.advance(60)
    assert cache.get(k1) is None
    cache.put(k1, "alice")
    cache.put(k2, "bob")
    cache.put(k3, "carol")
    assert len(cache) == 2
    assert cache.get(k1) is None


def test_throttle_per_account_and_per_address() -> None:
    clock = ManualClock()
    throttle = LoginThrottle(clock, max_failures=3, window=300, max_keys=100)
    for _ in range(3):
        throttle.check("alice", "10.0.0.1")
        throttle.failed("alice", "10.0.0.1")
    with pytest.raises(Throttled) as info:
        throttle.check("alice", "10.0.0.9")  # the account, from anywhere
    assert info.value.retry_after == 300
    with pytest.raises(Throttled):
        throttle.check("bob", "10.0.0.1")  # the address, for any account
    throttle.check("bob", "10.0.0.2")
    clock.advance(200)
    with pytest.raises(Throttled) as info:
        throttle.check("alice", None)
    assert info.value.retry_after == 100
    clock.advance(100)
    throttle.check("alice", "10.0.0.1")


def test_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(ManualClock(), max_failures=1, max_keys=10)
    for i in range(1000):
        throttle.failed(None, f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._windows) == 10
