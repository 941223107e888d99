"""Signing keys, issued tokens and their verification, including interop facts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from regd.auth import KeyRing, TokenIssuer, TokenVerifier, TrustedIssuer, Unauthenticated
from regd.auth.scopes import Scope
from regd.clock import ManualClock
from tests.auth.conftest import ISSUER, SERVICE

PULL = [Scope("repository", "team/app", frozenset({"pull"}))]


def independent_kid(cert: x509.Certificate) -> str:
    """libtrust's key ID, computed here from its definition."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode()
    assert len(b32) == 48
    assert "=" not in b32
    return ":".join(b32[i * 4 : i * 4 + 4] for i in range(12))


def verifier(keys: KeyRing, clock: ManualClock, **kw: Any) -> TokenVerifier:
    return TokenVerifier(
        clock, own=keys, issuer=kw.pop("issuer", ISSUER), service=kw.pop("service", SERVICE), **kw
    )


def test_token_verifies_with_only_the_published_certificate(tmp_path: Path) -> None:
    clock = ManualClock(time.time())  # PyJWT below checks times against the real clock
    keys = KeyRing.open(tmp_path / "auth", ISSUER, clock)
    issued = TokenIssuer(keys, ISSUER, clock).access_token("alice", SERVICE, PULL)
    bundle = x509.load_pem_x509_certificates(keys.certificate_bundle())
    assert len(bundle) == 1
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "ES256"
    assert header["kid"] == independent_kid(bundle[0])
    claims = jwt.decode(
        issued.token,
        bundle[0].public_key(),
        algorithms=["ES256"],
        audience=SERVICE,
        issuer=ISSUER,
    )
    assert claims["sub"] == "alice"
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    assert set(claims) >= {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"}
    assert claims["exp"] - claims["iat"] == issued.expires_in == 300
    # The JWKS carries the same key under the same kid.
    (entry,) = keys.jwks()["keys"]
    assert entry["kid"] == header["kid"]
    jwk_key = jwt.PyJWK.from_dict(entry).key
    jwt.decode(issued.token, jwk_key, algorithms=["ES256"], audience=SERVICE, issuer=ISSUER)


def test_keys_survive_a_restart_and_are_private(tmp_path: Path) -> None:
    clock = ManualClock()
    first = KeyRing.open(tmp_path / "auth", ISSUER, clock)
    again = KeyRing.open(tmp_path / "auth", ISSUER, clock)
    assert [k.kid for k in again.keys] == [first.current.kid]
    assert (first.current.path.with_suffix(".key").stat().st_mode & 0o077) == 0


def test_rotation_keeps_old_tokens_valid_until_they_expire(tmp_path: Path) -> None:
    clock = ManualClock()
    keys = KeyRing.open(tmp_path / "auth", ISSUER, clock)
    issuer = TokenIssuer(keys, ISSUER, clock)
    old = issuer.access_token("a", SERVICE, PULL).token
    # Another replica sharing the directory.
    replica_keys = KeyRing.open(tmp_path / "auth", ISSUER, clock)
    replica = verifier(replica_keys, clock)
    clock.advance(100)
    new_key = keys.rotate()
    new = issuer.access_token("a", SERVICE, PULL).token
    assert (
        jwt.get_unverified_header(new)["kid"]
        == new_key.kid
        != jwt.get_unverified_header(old)["kid"]
    )
    mine = verifier(keys, clock)
    assert mine.verify(old).subject == "a"
    assert replica.verify(new).subject == "a"  # found by reloading the directory
    assert keys.prune(token_ttl=issuer.access_ttl) == []  # old tokens may still be alive
    clock.advance(issuer.access_ttl + 1)
    assert len(keys.prune(token_ttl=issuer.access_ttl)) == 1
    assert len(keys.certificate_bundle().split(b"-----END CERTIFICATE-----")) == 2
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier(keys, clock).decode(old)


def _forge(claims: dict[str, Any], key: Any, alg: str, headers: dict[str, Any]) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def _claims(clock: ManualClock, **over: Any) -> dict[str, Any]:
    now = int(clock.now())
    claims = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "j",
        "access": [PULL[0].claim()],
    }
    claims.update(over)
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        + "."
        + _b64(json.dumps(claims).encode())
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


def test_bad_tokens_are_refused(keys: KeyRing, clock: ManualClock) -> None:
    v = verifier(keys, clock)
    kid = keys.current.kid
    own = keys.current.private_key
    other = ec.generate_private_key(ec.SECP256R1())
    good = _forge(_claims(clock), own, "ES256", {"kid": kid})
    assert v.verify(good).access == tuple(PULL)

    cases = {
        "signature does not verify": _forge(_claims(clock), other, "ES256", {"kid": kid}),
        "unknown key": _forge(_claims(clock), other, "ES256", {"kid": "AAAA:BBBB"}),
        "names no key": _forge(_claims(clock), own, "ES256", {}),
        "another service": _forge(_claims(clock, aud="elsewhere"), own, "ES256", {"kid": kid}),
        "untrusted issuer": _forge(_claims(clock, iss="mallory"), own, "ES256", {"kid": kid}),
        "has expired": _forge(
            _claims(clock, exp=int(clock.now()) - 31), own, "ES256", {"kid": kid}
        ),
        "not valid yet": _forge(
            _claims(clock, nbf=int(clock.now()) + 31), own, "ES256", {"kid": kid}
        ),
        "malformed": "abc.def",
        "longer than": "a" * 9000,
        "algorithm 'none'": _b64(json.dumps({"alg": "none", "kid": kid}).encode())
        + "."
        + _b64(json.dumps(_claims(clock)).encode())
        + ".",
        # The key-confusion attack: the public certificate used as an HMAC secret.
        "algorithm 'HS256'": _hs256(_claims(clock), keys.current.certificate_pem(), kid),
        'Token is missing the "exp" claim': _forge(
            {k: v for k, v in _claims(clock).items() if k != "exp"}, own, "ES256", {"kid": kid}
        ),
    }
    for message, token in cases.items():
        with pytest.raises(Unauthenticated) as info:
            v.verify(token)
        assert message in str(info.value), (message, str(info.value))
        assert info.value.error == "invalid_token"
    # Within the leeway, a little clock skew is forgiven.
    assert v.verify(_forge(_claims(clock, nbf=int(clock.now()) + 20), own, "ES256", {"kid": kid}))


def test_a_cached_token_still_expires(keys: KeyRing, clock: ManualClock) -> None:
    v = verifier(keys, clock)
    token = TokenIssuer(keys, ISSUER, clock).access_token("a", SERVICE, PULL).token
    assert v.verify(token).subject == "a"
    clock.advance(300 + 31)
    with pytest.raises(Unauthenticated, match="expired"):
        v.verify(token)


def test_refresh_tokens_are_not_access_tokens(keys: KeyRing, clock: ManualClock) -> None:
    issuer = TokenIssuer(keys, ISSUER, clock)
    v = verifier(keys, clock)
    refresh = issuer.refresh_token("alice", SERVICE, password_stamp="abc")
    with pytest.raises(Unauthenticated, match="refresh token is not an access token"):
        v.verify(refresh)
    assert v.verify_refresh(refresh).password_stamp == "abc"
    access = issuer.access_token("alice", SERVICE, PULL).token
    with pytest.raises(Unauthenticated, match="not a refresh token"):
        v.verify_refresh(access)


def test_external_issuer_by_kid_from_a_certificate_bundle(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    ca = trustme.CA()
    leaf = ca.issue_cert("tokens.example")
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(leaf.cert_chain_pems[0].bytes())
    trusted = TrustedIssuer.from_certificate_bundle("ext", "registry.test", bundle)
    v = TokenVerifier(clock, trusted=[trusted])
    claims = _claims(clock, iss="ext", aud="registry.test")
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": independent_kid(cert)})
    assert v.verify(token).issuer == "ext"
    with pytest.raises(Unauthenticated, match="untrusted issuer"):
        v.verify(
            jwt.encode(
                _claims(clock, aud="registry.test"),
                key,
                algorithm="ES256",
                headers={"kid": independent_kid(cert)},
            )
        )


def test_external_issuer_by_x5c_chain(tmp_path: Path) -> None:
    clock = ManualClock(time.time())
    ca = trustme.CA()
    leaf = ca.issue_cert("tokens.example")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER
    )
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.cert_pem.bytes())
    v = TokenVerifier(clock, trusted=[TrustedIssuer.from_certificate_bundle("ext", "svc", bundle)])
    claims = _claims(clock, iss="ext", aud="svc")
    x5c = [base64.b64encode(der).decode()]
    assert v.verify(jwt.encode(claims, key, algorithm="ES256", headers={"x5c": x5c})).subject
    # A chain from another CA does not end in the bundle.
    stranger = trustme.CA().issue_cert("tokens.example")
    skey = serialization.load_pem_private_key(stranger.private_key_pem.bytes(), None)
    sder = x509.load_pem_x509_certificate(stranger.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER
    )
    forged = jwt.encode(
        claims, skey, algorithm="ES256", headers={"x5c": [base64.b64encode(sder).decode()]}
    )
    with pytest.raises(Unauthenticated, match="trusted certificate"):
        v.verify(forged)
    with pytest.raises(Unauthenticated, match="malformed certificate"):
        v.verify(jwt.encode(claims, key, algorithm="ES256", headers={"x5c": ["!!"]}))


def test_external_issuer_from_a_jwks_file(tmp_path: Path) -> None:
    clock = ManualClock()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    entry = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    entry["kid"] = "k1"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [entry]}))
    v = TokenVerifier(clock, trusted=[TrustedIssuer.from_jwks("ext", "svc", path)])
    claims = _claims(clock, iss="ext", aud="svc")
    assert v.verify(jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "k1"}))
    with pytest.raises(Unauthenticated, match="unknown key"):
        v.verify(jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "k2"}))
