"""Token signing keys: generated on first start, each with a self-signed certificate.

Distribution trusts a token issuer through a bundle of certificates and finds the key of a
token by its `kid` in libtrust's format, so every key here has a certificate and such a kid;
newer verifiers read the same keys as a JWKS.

Algorithm: ES256. Distribution 2.8 accepts it as well as RS256; its keys are generated in
microseconds (several replicas starting at once on a fresh directory race for a moment
only), its signatures are 64 bytes instead of 256, so every request header carrying a
token is smaller, and verified tokens are cached, so ECDSA's slower verification is paid
once per token rather than per request.

Rotation: `KeyRing.rotate` writes a new key, which signs from then on; older keys keep
verifying until every token they signed has expired (`token_ttl` after the next key was
made), and `prune` then deletes them.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from regd.clock import Clock
from regd.errors import ConfigError

ALGORITHM = "ES256"
CERTIFICATE_YEARS = 10


def libtrust_kid(public_key: PublicKeyTypes) -> str:
    """The key ID Distribution derives from a key: SHA-256 over the DER SubjectPublicKeyInfo,
    the first 240 bits in base32, as 12 groups of 4 characters joined by ':'."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, 48, 4))


def jwk(public_key: PublicKeyTypes, kid: str) -> dict[str, Any]:
    """One JWKS entry for a public key."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        entry: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(public_key))
        entry["alg"] = {256: "ES256", 384: "ES384", 521: "ES512"}[public_key.curve.key_size]
    else:
        entry = json.loads(RSAAlgorithm.to_jwk(public_key))  # type: ignore[arg-type]
        entry["alg"] = "RS256"
    entry["kid"] = kid
    entry["use"] = "sig"
    return entry


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    created_at: float
    path: Path

    @property
    def public_key(self) -> PublicKeyTypes:
        return self.certificate.public_key()

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _new_key(directory: Path, issuer: str, now: float) -> SigningKey:
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{issuer} token signing"[:64])])
    start = datetime.datetime.fromtimestamp(now, datetime.UTC) - datetime.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365 * CERTIFICATE_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(private_key, hashes.SHA256())
    )
    # Named by creation time (microseconds), so sorting the names sorts the keys by age.
    stem = directory / f"signing-{int(now * 1_000_000):020d}"
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    _write_atomically(stem.with_suffix(".crt"), cert_pem, 0o644)
    # The key last: a key file present means its certificate is too.
    _write_atomically(stem.with_suffix(".key"), key_pem, 0o600)
    return SigningKey(libtrust_kid(private_key.public_key()), private_key, certificate, now, stem)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load(stem: Path) -> SigningKey:
    try:
        private_key = serialization.load_pem_private_key(
            stem.with_suffix(".key").read_bytes(), password=None
        )
        certificate = x509.load_pem_x509_certificate(stem.with_suffix(".crt").read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load signing key {stem}.key/.crt: {exc}") from None
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        private_key.curve, ec.SECP256R1
    ):
        raise ConfigError(f"signing key {stem}.key is not a P-256 key (regd signs ES256)")
    if certificate.public_key() != private_key.public_key():
        raise ConfigError(f"signing certificate {stem}.crt does not match {stem}.key")
    created = int(stem.name.removeprefix("signing-")) / 1_000_000
    return SigningKey(
        libtrust_kid(private_key.public_key()), private_key, certificate, created, stem
    )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Replicas sharing a data directory make the first key once, not once each."""
    with open(directory / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class KeyRing:
    """The keys in one directory: the newest signs, all verify."""

    def __init__(self, directory: Path, issuer: str, clock: Clock) -> None:
        self.directory = directory
        self.issuer = issuer
        self._clock = clock
        self.keys: list[SigningKey] = []

    @classmethod
    def open(cls, directory: Path, issuer: str, clock: Clock) -> KeyRing:
        """Load the directory's keys, making the first one if there is none (blocking I/O:
        call at start-up)."""
        ring = cls(directory, issuer, clock)
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _locked(directory):
                ring.reload()
                if not ring.keys:
                    ring.keys = [_new_key(directory, issuer, clock.now())]
        except OSError as exc:
            raise ConfigError(f"cannot use signing key directory {directory}: {exc}") from None
        return ring

    def reload(self) -> None:
        """Read the keys again (another replica may have rotated)."""
        stems = sorted(p.with_suffix("") for p in self.directory.glob("signing-*.key"))
        self.keys = [_load(stem) for stem in stems]

    @property
    def current(self) -> SigningKey:
        return self.keys[-1]

    def by_kid(self, kid: str) -> SigningKey | None:
        for key in self.keys:
            if key.kid == kid:
                return key
        return None

    def rotate(self) -> SigningKey:
        with _locked(self.directory):
            key = _new_key(self.directory, self.issuer, self._clock.now())
            self.reload()
        return key

    def prune(self, token_ttl: float) -> list[str]:
        """Delete keys superseded more than `token_ttl` ago; returns their kids."""
        now = self._clock.now()
        gone = []
        with _locked(self.directory):
            self.reload()
            for older, newer in zip(self.keys, self.keys[1:], strict=False):
                if newer.created_at + token_ttl < now:
                    older.path.with_suffix(".key").unlink(missing_ok=True)
                    older.path.with_suffix(".crt").unlink(missing_ok=True)
                    gone.append(older.kid)
            self.reload()
        return gone

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jwk(key.public_key, key.kid) for key in self.keys]}

    def certificate_bundle(self) -> bytes:
        """Every verifying key's certificate, PEM: what Distribution's rootcertbundle holds."""
        return b"".join(key.certificate_pem() for key in self.keys)
