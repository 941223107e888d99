"""Transport and authentication: every request the registry client sends goes through here.

Addressing (HTTP for loopback, HTTPS elsewhere), Basic and Bearer challenges, token caching
per scope set, and turning transport failures and error answers into `ClientError`s.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import ssl
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import httpx

from regd.client.auth import Challenge, Credentials, CredentialStore, parse_challenges
from regd.client.errors import (
    AuthError,
    ConnectError,
    NotFoundError,
    ProtocolError,
    ResponseError,
    UnsupportedError,
)
from regd.clock import SYSTEM_CLOCK, Clock
from regd.oci.digest import Digest
from regd.oci.reference import Reference

Scope = str


class CredentialSource(Protocol):
    def get(self, host: str) -> Credentials | None: ...


def is_loopback(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def next_link(response: httpx.Response) -> str | None:
    for value in response.headers.get_list("Link"):
        for part in value.split(","):
            match = re.match(r"\s*<([^>]*)>\s*;(.*)", part)
            if match and re.search(r'rel="?next"?', match.group(2)):
                return match.group(1)
    return None


def without_query(url: httpx.URL | str) -> str:
    return str(httpx.URL(str(url)).copy_with(query=None))


def need_host(ref: Reference) -> str:
    if not ref.host:
        raise ValueError(f"reference {ref} names no registry host")
    return ref.host


def need_digest(ref: Reference) -> Digest:
    if ref.digest is None:
        raise ValueError(f"reference {ref} names no digest")
    return ref.digest


def canonical_scope(scope: Scope) -> Scope:
    """`repository:a:push,pull` and `repository:a:pull,push` are one scope (one token)."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and name):
        return scope
    return f"{kind}:{name}:{','.join(sorted(set(actions.split(','))))}"


def pull_scope(repository: str) -> Scope:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> Scope:
    return f"repository:{repository}:pull,push"


@dataclass(slots=True)
class _HostAuth:
    scheme: str
    realm: str = ""
    service: str = ""


def tls_verification(*, insecure: bool, ca_cert: str | None) -> ssl.SSLContext | bool:
    """How servers' certificates are checked: against the system's trust store (not a
    bundle shipped with httpx), plus the CA certificates in `ca_cert` when given."""
    if insecure:
        return False
    context = ssl.create_default_context()
    if ca_cert:
        # Read here so a missing file is an OSError that names it.
        pem = Path(ca_cert).read_text(encoding="ascii", errors="replace")
        try:
            context.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError):
            raise OSError(0, "not a PEM CA certificate (--ca-cert)", ca_cert) from None
    return context


class Transport:
    """Requests to any number of registries, with their authentication.

    Loopback hosts (and every host with ``plain_http``) are spoken to over HTTP, all
    others over HTTPS. Basic and Bearer challenges are answered with credentials from
    ``credentials`` (docker's config.json by default); tokens are kept until they expire.
    The resource operations (manifests, blobs, listings) build on `_send` and `_call`.
    """

    def __init__(
        self,
        *,
        credentials: CredentialSource | None = None,
        plain_http: bool = False,
        insecure: bool = False,
        ca_cert: str | None = None,
        timeout: float = 300.0,
        user_agent: str = "regctl/0.1",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._credentials: CredentialSource = (
            credentials if credentials is not None else CredentialStore()
        )
        self._plain_http = plain_http
        # The OAuth2 client_id names the program, as the User-Agent does (regctl, regd).
        self._client_id = user_agent.split("/", 1)[0]
        self._http = httpx.AsyncClient(
            verify=tls_verification(insecure=insecure, ca_cert=ca_cert),
            timeout=httpx.Timeout(timeout, connect=15.0),
            headers={"User-Agent": user_agent},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._auth: dict[str, _HostAuth] = {}
        # Token lifetimes are wall-clock seconds (a JWT's `exp` is), so tests move `clock`.
        self._clock = clock
        self._tokens: dict[tuple[str, tuple[Scope, ...]], tuple[str, float]] = {}
        self._creds_cache: dict[str, Credentials | None] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- addressing -----------------------------------------------------------------

    def base_url(self, host: str) -> str:
        api_host = "registry-1.docker.io" if host == "docker.io" else host
        scheme = "http" if self._plain_http or is_loopback(host) else "https"
        return f"{scheme}://{api_host}"

    def _url(self, host: str, path: str) -> str:
        return self.base_url(host) + path

    # -- authentication ---------------------------------------------------------------

    def _creds(self, host: str) -> Credentials | None:
        if host not in self._creds_cache:
            self._creds_cache[host] = self._credentials.get(host)
        return self._creds_cache[host]

    async def _authorization(self, host: str, scopes: tuple[Scope, ...]) -> str | None:
        state = self._auth.get(host)
        if state is None:
            return None
        if state.scheme == "basic":
            creds = self._creds(host)
            if creds is None:
                return None
            pair = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        cached = self._tokens.get((host, scopes))
        if cached is not None and cached[1] > self._clock.now():
            return "Bearer " + cached[0]
        token = await self._fetch_token(host, state, scopes)
        return "Bearer " + token

    async def _fetch_token(self, host: str, state: _HostAuth, scopes: tuple[Scope, ...]) -> str:
        creds = self._creds(host)
        try:
            if creds is not None and creds.identity_token:
                # What `docker login` stores for a token server: an OAuth2 refresh token,
                # exchanged by POST (the token spec's OAuth2 flow), not a password.
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "service": state.service,
                    "scope": " ".join(scopes),
                    "client_id": self._client_id,
                }
                method = "POST"
                response = await self._http.post(state.realm, data=form)
            else:
                params: list[tuple[str, str]] = []
                if state.service:
                    params.append(("service", state.service))
                params.extend(("scope", s) for s in scopes)
                headers: dict[str, str] = {}
                if creds is not None and creds.username:
                    pair = f"{creds.username}:{creds.password}".encode()
                    headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
                method = "GET"
                response = await self._http.get(state.realm, params=tuple(params), headers=headers)
        except httpx.TransportError as exc:
            raise ConnectError(state.realm, _reason(exc)) from exc
        if response.status_code != 200:
            refused = error_from(response, method, state.realm)
            if isinstance(refused, AuthError):
                # Credentials are kept per registry, so name the registry, and say where
                # the refusal came from.
                raise AuthError(
                    method,
                    self.base_url(host),
                    refused.status,
                    refused.code,
                    f"the token server {without_query(state.realm)} refused the credentials"
                    + (f": {refused.detail}" if refused.detail else ""),
                )
            raise refused
        try:
            doc = response.json()
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            token = None
        if not isinstance(token, str) or not token:
            raise ProtocolError(f"{method} {state.realm}: token server answered without a token")
        # A margin so a token is never sent in the second it expires.
        self._tokens[(host, scopes)] = (token, self._clock.now() + max(lifetime - 10.0, 1.0))
        return token

    def _learn(self, response: httpx.Response) -> tuple[_HostAuth, tuple[Scope, ...]] | None:
        """The scheme a 401 asks for, and the scopes its challenge names."""
        challenges: list[Challenge] = []
        for value in response.headers.get_list("WWW-Authenticate"):
            challenges.extend(parse_challenges(value))
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                state = _HostAuth(
                    "bearer", challenge.params["realm"], challenge.params.get("service", "")
                )
                scope = challenge.params.get("scope", "")
                return state, tuple(canonical_scope(s) for s in scope.split()) if scope else ()
        for challenge in challenges:
            if challenge.scheme == "basic":
                return _HostAuth("basic"), ()
        return None

    # -- requests ---------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        host: str,
        url: str,
        scopes: Iterable[Scope] = (),
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send one request, answering an auth challenge once if the body allows a retry.
        A caller's own Authorization header (regd's admin token) is sent as it is, and a
        refusal of it is the answer: stored credentials never stand in for it."""
        wanted = tuple(sorted(set(scopes)))
        replayable = content is None or isinstance(content, bytes)
        own_authorization = headers is not None and "Authorization" in headers
        challenge_seen = own_authorization
        while True:
            request_headers = dict(headers or {})
            authorization = None if own_authorization else await self._authorization(host, wanted)
            if authorization is not None:
                request_headers["Authorization"] = authorization
            request = self._http.build_request(
                method, url, headers=request_headers, params=params, content=content
            )
            try:
                response = await self._http.send(
                    request, stream=stream, follow_redirects=follow_redirects
                )
            except httpx.TransportError as exc:
                raise ConnectError(without_query(request.url), _reason(exc)) from exc
            if response.status_code != 401 or challenge_seen or not replayable:
                return response
            challenge_seen = True
            found = self._learn(response)
            if found is None:
                return response
            learned, asked = found
            previous = self._auth.get(host)
            if learned.scheme == "basic" and (self._creds(host) is None or previous == learned):
                return response
            self._auth[host] = learned
            # A stale token may be why we were refused: drop it so a fresh one is fetched.
            self._tokens.pop((host, wanted), None)
            wanted = tuple(sorted(set(wanted) | set(asked)))
            await response.aclose()

    async def _call(
        self,
        method: str,
        host: str,
        url: str,
        scopes: Iterable[Scope] = (),
        *,
        ok: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> httpx.Response:
        response = await self._send(method, host, url, scopes, **kwargs)
        if response.status_code not in ok:
            await response.aread()
            await response.aclose()
            raise error_from(response, method, str(response.request.url))
        return response


def _caused_by(exc: BaseException, kind: type[BaseException], depth: int = 0) -> bool:
    """Look through causes and exception groups (trio reports each address tried)."""
    if isinstance(exc, kind):
        return True
    if depth > 8:
        return False
    inner: list[BaseException] = []
    if isinstance(exc, BaseExceptionGroup):
        inner.extend(exc.exceptions)
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            inner.append(linked)
    return any(_caused_by(e, kind, depth + 1) for e in inner)


def _reason(exc: httpx.TransportError) -> str:
    if _caused_by(exc, ConnectionRefusedError):
        return "connection refused"
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return "TLS verification failed (certificate not trusted); use --ca-cert FILE or --insecure"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        lowered = text.lower()
        if "refused" in lowered:
            return "connection refused"
        if "name or service not known" in lowered or "nodename nor servname" in lowered:
            return "unknown host"
        if "certificate" in lowered:
            return f"TLS verification failed ({text}); use --ca-cert FILE or --insecure"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError) and "http/1" in text.lower():
        return text
    return text.splitlines()[0]


def error_from(response: httpx.Response, method: str, url: str) -> ResponseError:
    code: str | None = None
    message: str | None = None
    try:
        doc = json.loads(response.content) if response.content else None
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        doc = None
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code") or "") or None
            raw = errors[0].get("message")
            message = str(raw) if raw else None
        elif isinstance(doc.get("details"), str):
            message = doc["details"]
    status = response.status_code
    where = without_query(url)
    cls: type[ResponseError]
    if status in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
        cls = AuthError
    elif status == 404:
        cls = NotFoundError
    elif status == 405 or code == "UNSUPPORTED":
        cls = UnsupportedError
    else:
        cls = ResponseError
    return cls(method, where, status, code, message)
