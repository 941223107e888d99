"""Passwords: bcrypt off the event loop, htpasswd files, and a short memory of good logins."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import bcrypt
import trio

from regd.clock import Clock
from regd.errors import ConfigError

# bcrypt reads at most 72 bytes; longer passwords are refused rather than silently cut.
MAX_PASSWORD_BYTES = 72
BCRYPT_ROUNDS = 12
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")

# bcrypt costs ~0.25 s of CPU at 12 rounds; two at a time keep the event loop's own thread
# and the database threads some CPU on a small machine, and bound what a login flood costs.
_LIMITER: trio.CapacityLimiter | None = None

# A hash to check unknown accounts against, so their answer takes as long as a known one's.
_DUMMY_HASH: bytes | None = None


def _limiter() -> trio.CapacityLimiter:
    global _LIMITER
    if _LIMITER is None:
        _LIMITER = trio.CapacityLimiter(2)
    return _LIMITER


class PasswordError(ValueError):
    """A password regd will not store (empty, too long)."""


def check_new_password(password: str) -> bytes:
    raw = password.encode()
    if not raw:
        raise PasswordError("the password is empty")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise PasswordError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return raw


async def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    raw = check_new_password(password)
    hashed = await trio.to_thread.run_sync(
        lambda: bcrypt.hashpw(raw, bcrypt.gensalt(rounds)), limiter=_limiter()
    )
    return hashed.decode()


def is_bcrypt_hash(text: str) -> bool:
    return text.startswith(_BCRYPT_PREFIXES) and len(text) == 60


async def verify_password(password: str, hashed: str | None) -> bool:
    """Check `password` against a bcrypt hash; with `hashed` None (no such account), spend
    the same time and answer False, so timing does not tell which accounts exist."""
    raw = password.encode()
    if hashed is None or not is_bcrypt_hash(hashed) or len(raw) > MAX_PASSWORD_BYTES:
        await trio.to_thread.run_sync(_spend_like_a_check, limiter=_limiter())
        return False
    target = hashed.encode()
    # checkpw compares in constant time.
    return await trio.to_thread.run_sync(lambda: bcrypt.checkpw(raw, target), limiter=_limiter())


def _spend_like_a_check() -> None:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = bcrypt.hashpw(b"regd", bcrypt.gensalt(BCRYPT_ROUNDS))
    bcrypt.checkpw(b"x", _DUMMY_HASH)


def load_htpasswd(path: Path) -> dict[str, str]:
    """An Apache htpasswd file with bcrypt entries (`htpasswd -B`), as it is.

    Any other line (MD5 `$apr1$`, SHA, crypt, plain) is refused with ConfigError naming its
    line number, since accepting weaker hashes silently would lower everyone's guard.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read htpasswd file {path}: {exc}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ConfigError(f"{path}:{number}: expected user:hash")
        if not is_bcrypt_hash(hashed):
            raise ConfigError(
                f"{path}:{number}: the entry for {user!r} is not a bcrypt hash; "
                "recreate it with `htpasswd -B`"
            )
        if user in users:
            raise ConfigError(f"{path}:{number}: {user!r} appears twice")
        users[user] = hashed
    return users


V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    until: float


class CredentialCache(Generic[V]):
    """Recently verified Basic credentials, so a pull of many blobs pays bcrypt once.

    Keys are HMACs of user and password under a per-process random key: the cache never holds
    a password, and its keys are useless outside this process. An entry lives `ttl` seconds;
    a revocation (a changed password, a disabled account) ends it sooner, as the caller
    checks each hit against regd.auth.revocation. At most `size` entries; the least recently
    used goes first.
    """

    def __init__(self, clock: Clock, ttl: float = 60.0, size: int = 4096) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry[V]] = OrderedDict()

    def key(self, user: str, password: str) -> bytes:
        message = user.encode() + b"\0" + password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def get(self, key: bytes) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.until <= self._clock.now():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: bytes, value: V) -> None:
        self._entries[key] = _Entry(value, self._clock.now() + self._ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def discard(self, key: bytes) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
