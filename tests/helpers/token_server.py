"""A Docker token server (the registry's Bearer auth) in a thread, and Distribution behind it.

The token server implements https://distribution.github.io/distribution/spec/auth/token/:
`GET /token?service=S&scope=repository:NAME:pull,push` with optional Basic credentials
answers a signed JWT whose `access` claim lists what the account may do. Distribution
verifies the signature through the `x5c` certificate chain in the JWT header against its
`rootcertbundle`, and checks `iss`, `aud`, `exp` and `nbf`.

Signing runs `openssl dgst -sha256 -sign` in a subprocess: the test environment has the
openssl CLI but not the `cryptography` package, and a few dozen tokens per session make the
cost of a process per signature irrelevant. No new dependency is needed.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypedDict
from urllib.parse import parse_qsl, urlsplit

import httpx

from tests.helpers.servers import DistributionServer, ServerStartError

OPENSSL_TIMEOUT = 30.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["openssl", *args],
        input=stdin,
        capture_output=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


@dataclass(frozen=True)
class SigningKey:
    """An RSA key and the self-signed certificate Distribution is told to trust."""

    key_path: Path
    cert_path: Path
    cert_der: bytes

    @classmethod
    def generate(cls, directory: Path, common_name: str = "regd-test-token-issuer") -> SigningKey:
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "token-key.pem"
        cert_path = directory / "token-cert.pem"
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "2",
            "-subj",
            f"/CN={common_name}",
            "-keyout",
            str(key_path),
            "-out",
            str(cert_path),
        )
        cert_der = _openssl("x509", "-in", str(cert_path), "-outform", "DER")
        return cls(key_path, cert_path, cert_der)

    def sign_jwt(self, claims: Mapping[str, object]) -> str:
        header = {
            "typ": "JWT",
            "alg": "RS256",
            # The chain is just the trusted certificate itself; Distribution accepts a leaf
            # that is one of its roots.
            "x5c": [base64.b64encode(self.cert_der).decode()],
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = _openssl(
            "dgst", "-sha256", "-sign", str(self.key_path), stdin=signing_input.encode()
        )
        return signing_input + "." + _b64url(signature)


@dataclass(frozen=True)
class Account:
    password: str
    # Actions this account may hold on any repository.
    repository_actions: frozenset[str]
    # Whether it may list the catalog (`registry:catalog:*`).
    catalog: bool = False


ALL_ACTIONS = frozenset({"pull", "push", "delete"})
DEFAULT_ACCOUNTS: dict[str, Account] = {
    "alice": Account("secret", ALL_ACTIONS, catalog=True),
    "bob": Account("bob-secret", frozenset({"pull"})),
}


class Access(TypedDict):
    """One entry of the JWT's `access` claim."""

    type: str
    name: str
    actions: list[str]


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered, for tests to inspect."""

    account: str | None
    scopes: tuple[str, ...]
    status: int
    granted: tuple[Access, ...] = ()
    # "GET" for the token spec's Basic-authenticated fetch, "POST" for the OAuth2 form.
    method: str = "GET"


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """`type:name:a,b` into its parts; the name may hold colons (a registry host:port)."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


@dataclass
class TokenServer:
    """The token endpoint, served from a background thread on 127.0.0.1."""

    key: SigningKey
    service: str = "regd-test"
    issuer: str = "regd-test-issuer"
    accounts: dict[str, Account] = field(default_factory=lambda: dict(DEFAULT_ACCOUNTS))
    # OAuth2 refresh tokens (what `docker login` saves as `identitytoken`) -> account.
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    # What the answer's `expires_in` tells the client.
    expires_in: int = 300
    _requests: list[TokenRequest] = field(default_factory=list, init=False)
    # Handler threads append while the test thread reads.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _httpd: ThreadingHTTPServer | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the token server is not running")
        return int(self._httpd.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    # -- counting ----------------------------------------------------------------------

    def history(self) -> list[TokenRequest]:
        """Every request answered since the start (or the last reset), oldest first."""
        with self._lock:
            return list(self._requests)

    def issued(self) -> list[TokenRequest]:
        """The requests that got a token, oldest first."""
        return [r for r in self.history() if r.status == 200]

    @property
    def token_count(self) -> int:
        return len(self.issued())

    def refused(self) -> list[TokenRequest]:
        return [r for r in self.history() if r.status != 200]

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- policy ------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """(accepted, account): no header is the anonymous account, None."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            user, sep, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        account = self.accounts.get(user)
        if (
            not sep
            or account is None
            or not secrets.compare_digest(account.password.encode(), password.encode())
        ):
            return False, user or None
        return True, user

    def grant(self, account: str | None, scopes: list[str]) -> list[Access]:
        """The intersection of what was asked and what the account may do."""
        policy = self.accounts.get(account) if account is not None else None
        access: list[Access] = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None or policy is None:
                continue
            kind, name, actions = parsed
            if kind == "repository":
                allowed = [a for a in actions if a in policy.repository_actions]
            elif kind == "registry" and name == "catalog" and policy.catalog:
                allowed = [a for a in actions if a == "*"]
            else:
                allowed = []
            if allowed:
                access.append(Access(type=kind, name=name, actions=allowed))
        return access

    def mint(self, account: str | None, access: list[Access]) -> dict[str, object]:
        now = int(time.time())
        expires = now + self.expires_in
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": expires,
            # Backdated a little: Distribution and this server share a clock, but `nbf`
            # exactly at `now` leaves nothing for rounding.
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        token = self.key.sign_jwt(claims)
        issued_at = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued_at,
        }

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("the token server is already running")
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"token-server-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = None
        self._thread = None


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._json(404, {"details": "not found"})
                return
            query = parse_qsl(url.query, keep_blank_values=True)
            service = next((v for k, v in query if k == "service"), None)
            scopes: list[str] = []
            for key, value in query:
                # One scope parameter may carry several, separated by spaces.
                if key == "scope":
                    scopes.extend(value.split())
            accepted, account = server.authenticate(self.headers.get("Authorization"))
            if not accepted:
                server.record(TokenRequest(account, tuple(scopes), 401))
                self._json(
                    401,
                    {"details": "incorrect username or password"},
                    {"WWW-Authenticate": f'Basic realm="{server.service}"'},
                )
                return
            if service is not None and service != server.service:
                server.record(TokenRequest(account, tuple(scopes), 400))
                self._json(400, {"details": f"unknown service {service!r}"})
                return
            access = server.grant(account, scopes)
            answer = server.mint(account, access)
            server.record(TokenRequest(account, tuple(scopes), 200, tuple(access)))
            self._json(200, answer)

        def do_POST(self) -> None:
            # The OAuth2 flavour (spec/auth/oauth): a form with grant_type=refresh_token or
            # grant_type=password, scopes space-separated in one `scope` field.
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qsl(self.rfile.read(length).decode(errors="replace"))
            if url.path != "/token":
                self._json(404, {"details": "not found"})
                return
            fields = dict(form)
            scopes = [s for key, value in form if key == "scope" for s in value.split()]
            grant_type = fields.get("grant_type")
            account: str | None
            if grant_type == "refresh_token":
                account = server.refresh_tokens.get(fields.get("refresh_token", ""))
                accepted = account is not None
            elif grant_type == "password":
                pair = f"{fields.get('username', '')}:{fields.get('password', '')}"
                basic = "Basic " + base64.b64encode(pair.encode()).decode()
                accepted, account = server.authenticate(basic)
            else:
                server.record(TokenRequest(None, tuple(scopes), 400, method="POST"))
                self._json(400, {"error": "unsupported_grant_type"})
                return
            if not accepted:
                server.record(TokenRequest(account, tuple(scopes), 401, method="POST"))
                self._json(401, {"error": "invalid_grant"})
                return
            access = server.grant(account, scopes)
            answer = server.mint(account, access)
            answer["scope"] = " ".join(scopes)
            server.record(TokenRequest(account, tuple(scopes), 200, tuple(access), "POST"))
            self._json(200, answer)

        def _json(self, status: int, doc: object, headers: Mapping[str, str] | None = None) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Quiet: pytest shows failures' own output, and this would drown it.
            pass

    return Handler


TOKEN_AUTH_CONFIG = """\
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
"""


class TokenAuthDistribution(DistributionServer):
    """Distribution that refuses anything without a token from `token_server`."""

    kind = "distribution-token"

    def __init__(self, *, root: Path, scratch: Path, token_server: TokenServer) -> None:
        super().__init__(root=root, scratch=scratch)
        self.token_server = token_server
        self.config.write_text(
            self.config.read_text()
            + TOKEN_AUTH_CONFIG.format(
                realm=token_server.realm,
                service=token_server.service,
                issuer=token_server.issuer,
                bundle=token_server.key.cert_path,
            )
        )

    def rotate_key(self, key: SigningKey) -> None:
        """Restart trusting only `key`, and have the token server sign with it.

        Tokens issued before are refused from then on, though their holders were told they
        are good for minutes: a revocation, as a key rotation or a skewed clock makes one.
        """
        old = self.token_server.key
        self.stop()
        self.config.write_text(
            self.config.read_text().replace(str(old.cert_path), str(key.cert_path))
        )
        self.token_server.key = key
        self.start()

    def _wait_ready(self, timeout: float) -> None:
        # With auth on, an unauthenticated /v2/ answers 401 with a Bearer challenge: that
        # is the sign of life, and checking the challenge catches a config that was ignored.
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerStartError(f"distribution exited early:\n{self.output()}")
                try:
                    answer = client.get(f"{self.url}/v2/")
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    challenge = answer.headers.get("WWW-Authenticate", "")
                    if answer.status_code == 401 and challenge.startswith("Bearer "):
                        return
                    last = f"GET /v2/ answered {answer.status_code} ({challenge!r})"
                time.sleep(0.05)
        self._kill_group(signal.SIGKILL)
        raise ServerStartError(
            f"distribution did not ask for a token on {self.url} ({last})\n{self.output()}"
        )
