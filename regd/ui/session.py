"""The UI's session: a signed cookie naming who logged in, and the CSRF token bound to it.

The cookie holds no password, only the account name and a stamp of its password hash: a
changed password (or a disabled account) ends every session of that account at its next
request. Sessions are checked against the same accounts and policy as the API's callers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from regd.auth import ANONYMOUS, Authenticator, Identity, Via
from regd.auth.tokens import password_stamp
from regd.errors import BackendError
from regd.metadata import accounts as rows


class SessionKeyError(BackendError):
    """The key that signs sessions cannot be read or made: no page can be served."""

    kind = "UI session key"


COOKIE = "regd_ui"
# A session lasts a working day; logging in again is cheap.
SESSION_SECONDS = 12 * 3600
SECRET_FILE = "ui-session.key"
_SECRET_BYTES = 32


def load_secret(key_dir: Path) -> bytes:
    """The key that signs session cookies, made on first use. It lives with the token
    signing keys, so replicas and workers sharing that directory accept each other's
    sessions. Blocking."""
    path = key_dir / SECRET_FILE
    try:
        if not path.exists():
            key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Written aside, then linked into place: a worker racing this one sees either
            # no file or a whole one, and the first link wins.
            draft = key_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(secrets.token_bytes(_SECRET_BYTES))
                with contextlib.suppress(FileExistsError):
                    os.link(draft, path)
            finally:
                draft.unlink()
        secret = path.read_bytes()
    except OSError as exc:
        raise SessionKeyError(f"cannot read or create {path}: {exc.strerror}") from None
    if len(secret) < _SECRET_BYTES:
        raise SessionKeyError(f"{path} is shorter than {_SECRET_BYTES} bytes")
    return secret


@dataclass(frozen=True, slots=True)
class Session:
    """`sid` identifies the browser's session (and its CSRF token); `user` and `stamp`
    are set once someone logged in."""

    sid: str
    user: str | None = None
    stamp: str | None = None
    expires: float = 0.0


def new_session(now: float, user: str | None = None, stamp: str | None = None) -> Session:
    return Session(secrets.token_urlsafe(18), user, stamp, now + SESSION_SECONDS)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, purpose: str, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose.encode() + b"\0" + data, hashlib.sha256).digest()

    def dump(self, session: Session) -> str:
        doc = {"s": session.sid, "u": session.user, "p": session.stamp, "e": session.expires}
        body = json.dumps(doc, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._mac('session', body))}"

    def load(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie carries; None if it is missing, forged or expired."""
        if not cookie or len(cookie) > 1024:
            return None
        body_text, _, mac_text = cookie.partition(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        try:
            doc = json.loads(body)
            session = Session(str(doc["s"]), doc["u"], doc["p"], float(doc["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > now else None

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac("csrf", session.sid.encode()))

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())


async def identity_of(auth: Authenticator, session: Session | None) -> Identity:
    """Who a session's holder is now: the account it names, with its current groups, if
    its password has not changed since; anonymous otherwise."""
    if session is None or session.user is None or session.stamp is None:
        return ANONYMOUS
    name = session.user
    hashed = auth.htpasswd.get(name)
    if hashed is not None:
        if hmac.compare_digest(password_stamp(hashed), session.stamp):
            return Identity(name, Via.PASSWORD)
        return ANONYMOUS
    account = await rows.get_account(auth.store, name)
    if (
        account is None
        or account.disabled
        or not hmac.compare_digest(password_stamp(account.password_hash), session.stamp)
    ):
        return ANONYMOUS
    return Identity(name, Via.PASSWORD, frozenset(account.groups))
