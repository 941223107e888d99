"""Session cookies: signed, expiring, and worth nothing once the password changed."""

from __future__ import annotations

from pathlib import Path

import bcrypt

from regd.auth import Authenticator, Policy, Via
from regd.auth.tokens import password_stamp
from regd.clock import ManualClock
from regd.metadata import MetadataStore, sqlite_url
from regd.ui.session import (
    SESSION_SECONDS,
    Session,
    Signer,
    identity_of,
    load_secret,
    new_session,
)


def test_a_cookie_is_accepted_only_as_signed_and_until_it_expires(tmp_path: Path) -> None:
    signer = Signer(load_secret(tmp_path / "keys"))
    # The same key the next time (and in every worker sharing the directory).
    assert load_secret(tmp_path / "keys") == load_secret(tmp_path / "keys")
    assert (tmp_path / "keys" / "ui-session.key").stat().st_mode & 0o077 == 0
    session = new_session(1000.0, "alice", "stamp")
    cookie = signer.dump(session)
    assert signer.load(cookie, 1000.0) == session
    assert signer.load(cookie, 1000.0 + SESSION_SECONDS) is None
    body, _, mac = cookie.partition(".")
    forged = Signer(b"x" * 32).dump(Session(session.sid, "admin", "stamp", session.expires))
    for bad in (None, "", "junk", f"{body}.", f"{forged.partition('.')[0]}.{mac}", forged):
        assert signer.load(bad, 1000.0) is None
    # The CSRF token belongs to its session only.
    other = new_session(1000.0)
    assert signer.csrf_ok(session, signer.csrf_token(session))
    assert not signer.csrf_ok(session, signer.csrf_token(other))
    assert not signer.csrf_ok(None, signer.csrf_token(session))
    assert not signer.csrf_ok(session, "")


async def test_a_password_change_ends_the_session(tmp_path: Path) -> None:
    store = MetadataStore(sqlite_url(tmp_path / "m.db"))
    store.create_schema()
    old = bcrypt.hashpw(b"first-password", bcrypt.gensalt(4)).decode()
    new = bcrypt.hashpw(b"second-password", bcrypt.gensalt(4)).decode()
    try:
        auth = Authenticator(
            store, Policy([]), ManualClock(), realm="", service="regd", htpasswd={"alice": old}
        )
        session = new_session(0.0, "alice", password_stamp(old))
        identity = await identity_of(auth, session)
        assert identity.name == "alice"
        assert identity.via is Via.PASSWORD
        auth.htpasswd["alice"] = new
        assert not (await identity_of(auth, session)).authenticated
        # An account that is nowhere: anonymous.
        stranger = new_session(0.0, "mallory", password_stamp(old))
        assert not (await identity_of(auth, stranger)).authenticated
        assert not (await identity_of(auth, new_session(0.0))).authenticated
    finally:
        await store.aclose()
