"""Authentication for the benchmark: one account on both registries, and what each request
carries for it.

`--auth basic`: both registries read the same htpasswd file and every request carries Basic
credentials. `--auth token`: regd runs the token service, Distribution trusts it (realm,
service, issuer and regd's `/auth/certs.pem` as its `rootcertbundle`), and requests carry a
Bearer token fetched from regd for the repository they touch.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote

from bench.httpc import Connection

MODES = ("none", "basic", "token")
USER = "bench"
PASSWORD = "bench-password-1"
# regd's defaults for auth.service and auth.issuer; Distribution is told the same.
SERVICE = "regd"
ISSUER = "regd"
# `htpasswd -B`'s default cost: what an operator's file has.
BCRYPT_ROUNDS = 5
# regd's access tokens live 300 s by default; fetch a new one well before that.
TOKEN_REUSE_S = 200.0

_REPOSITORY_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)/")


class AuthError(RuntimeError):
    """The token service refused or answered something unusable."""


def write_htpasswd(path: Path) -> None:
    import bcrypt  # regd's own dependency; only the authenticated modes need it

    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    path.write_text(f"{USER}:{hashed}\n")


def scopes_for(target: str) -> list[str]:
    """The token scopes a request needs, read from its target."""
    path, _, query = target.partition("?")
    if path.startswith("/v2/_catalog"):
        return ["registry:catalog:*"]
    scopes = []
    match = _REPOSITORY_PATH.match(path)
    if match:
        scopes.append(f"repository:{match.group(1)}:pull,push,delete")
    for source in parse_qs(query).get("from", []):
        scopes.append(f"repository:{source}:pull")
    return scopes


@dataclass(frozen=True)
class Credentials:
    """What a client knows: the mode, the account, and where regd's token service is.
    Picklable, so load generator processes get it as an argument."""

    mode: str = "none"
    user: str = USER
    password: str = PASSWORD
    token_host: str = ""
    token_port: int = 0
    service: str = SERVICE

    @property
    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

    def fetch_token(self, scopes: list[str]) -> str:
        query = "&".join([f"service={quote(self.service)}"] + [f"scope={quote(s)}" for s in scopes])
        with Connection(self.token_host, self.token_port, timeout=30) as conn:
            answer = conn.request("GET", f"/auth/token?{query}", {"Authorization": self.basic})
        if answer.status != 200:
            raise AuthError(f"token service answered {answer.status}: {answer.body[:200]!r}")
        token = json.loads(answer.body).get("token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"token service answered no token: {answer.body[:200]!r}")
        return token

    def headers_for(self, target: str) -> dict[str, str]:
        """The Authorization header for one request, fetching a token when needed."""
        if self.mode == "basic":
            return {"Authorization": self.basic}
        if self.mode == "token":
            return {"Authorization": "Bearer " + self.fetch_token(scopes_for(target))}
        return {}


NO_AUTH = Credentials()


@dataclass
class TokenCache:
    """Bearer tokens by scope for one connection: what a real client keeps."""

    credentials: Credentials
    _tokens: dict[tuple[str, ...], tuple[float, str]] = field(default_factory=dict)

    def headers_for(self, target: str) -> dict[str, str]:
        if self.credentials.mode != "token":
            return self.credentials.headers_for(target)
        key = tuple(scopes_for(target))
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is None or now - cached[0] > TOKEN_REUSE_S:
            cached = (now, self.credentials.fetch_token(list(key)))
            self._tokens[key] = cached
        return {"Authorization": "Bearer " + cached[1]}
