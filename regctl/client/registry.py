"""An async client for the OCI Distribution API that works against any registry."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import httpx

from regctl.client.auth import Challenge, Credentials, CredentialStore, parse_challenges
from regctl.client.errors import (
    AuthError,
    ConnectError,
    DigestMismatchError,
    NotFoundError,
    ProtocolError,
    ResponseError,
    UnsupportedError,
)
from regd.oci import mediatypes as mt
from regd.oci.digest import Digest, DigestError, Hasher
from regd.oci.manifest import Descriptor, Manifest, ManifestError, parse_manifest
from regd.oci.reference import Reference

# Registries must accept manifests of 4 MiB; reading a little more tolerates generous ones
# while still refusing to buffer something that is plainly not a manifest.
MANIFEST_READ_LIMIT = 8 * 1024 * 1024
# Below this, a blob goes up in one PUT; above, it is streamed through a PATCH.
MONOLITHIC_LIMIT = 4 * 1024 * 1024

MANIFEST_ACCEPT = ", ".join(
    [mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST]
)

Scope = str
ReferrersSource = Literal["api", "tag-schema"]


class CredentialSource(Protocol):
    def get(self, host: str) -> Credentials | None: ...


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """What a HEAD on a manifest tells: enough to list and compare without the body."""

    digest: Digest
    media_type: str
    size: int
    last_modified: datetime | None = None


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: Digest

    def parse(self) -> Manifest:
        try:
            return parse_manifest(self.data, self.media_type)
        except ManifestError as exc:
            raise ProtocolError(f"manifest {self.digest} cannot be read: {exc}") from None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: Digest
    # The registry answered `OCI-Subject`: it indexes referrers itself.
    subject_indexed: bool


@dataclass(frozen=True, slots=True)
class Referrers:
    descriptors: tuple[Descriptor, ...]
    # "api": the registry's referrers endpoint; "tag-schema": the `<alg>-<hex>` tag that
    # clients maintain for registries without that endpoint.
    source: ReferrersSource


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


def referrers_tag(digest: Digest) -> str:
    """The fallback tag the distribution spec defines for a subject's referrers index."""
    return f"{digest.algorithm}-{digest.hex}"[:128]


def _base_media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _header_digest(response: httpx.Response) -> Digest | None:
    raw = response.headers.get("Docker-Content-Digest")
    if not raw:
        return None
    try:
        return Digest.parse(raw.strip())
    except DigestError:
        return None


def _next_link(response: httpx.Response) -> str | None:
    for value in response.headers.get_list("Link"):
        for part in value.split(","):
            match = re.match(r"\s*<([^>]*)>\s*;(.*)", part)
            if match and re.search(r'rel="?next"?', match.group(2)):
                return match.group(1)
    return None


def _without_query(url: httpx.URL | str) -> str:
    return str(httpx.URL(str(url)).copy_with(query=None))


def _need_host(ref: Reference) -> str:
    if not ref.host:
        raise ValueError(f"reference {ref} names no registry host")
    return ref.host


def _need_digest(ref: Reference) -> Digest:
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


def _pull(repository: str) -> Scope:
    return f"repository:{repository}:pull"


def _push(repository: str) -> Scope:
    return f"repository:{repository}:pull,push"


@dataclass(slots=True)
class _HostAuth:
    scheme: str
    realm: str = ""
    service: str = ""


class BlobStream:
    """The body of a blob GET, read chunk by chunk and checked against its digest."""

    def __init__(self, response: httpx.Response, url: str, digest: Digest, *, verify: bool) -> None:
        self._response = response
        self._url = url
        self.digest = digest
        self._verify = verify
        length = response.headers.get("Content-Length")
        self.size: int | None = int(length) if length and length.isdigit() else None

    async def chunks(self) -> AsyncIterator[bytes]:
        hasher = Hasher(self.digest.algorithm) if self._verify else None
        received = 0
        try:
            async for chunk in self._response.aiter_raw():
                received += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                yield chunk
        except httpx.TransportError as exc:
            raise ConnectError(self._url, f"transfer interrupted: {exc}") from exc
        if self.size is not None and received != self.size:
            raise ProtocolError(
                f"GET {self._url}: received {received} bytes of {self.size} announced"
            )
        if hasher is not None:
            actual = hasher.digest()
            if actual != self.digest:
                raise DigestMismatchError(f"GET {self._url}", str(self.digest), str(actual))


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


class RegistryClient:
    """Talks to any number of registries; every reference must carry its host.

    Loopback hosts (and every host with ``plain_http``) are spoken to over HTTP, all
    others over HTTPS. Basic and Bearer challenges are answered with credentials from
    ``credentials`` (docker's config.json by default); tokens are kept until they expire.
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
    ) -> None:
        self._credentials: CredentialSource = (
            credentials if credentials is not None else CredentialStore()
        )
        self._plain_http = plain_http
        self._http = httpx.AsyncClient(
            verify=tls_verification(insecure=insecure, ca_cert=ca_cert),
            timeout=httpx.Timeout(timeout, connect=15.0),
            headers={"User-Agent": user_agent},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._auth: dict[str, _HostAuth] = {}
        self._tokens: dict[tuple[str, tuple[Scope, ...]], tuple[str, float]] = {}
        self._creds_cache: dict[str, Credentials | None] = {}

    async def __aenter__(self) -> RegistryClient:
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
        if cached is not None and cached[1] > time.monotonic():
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
                    "client_id": "regctl",
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
            refused = _error_from(response, method, state.realm)
            if isinstance(refused, AuthError):
                # Credentials are kept per registry, so name the registry, and say where
                # the refusal came from.
                raise AuthError(
                    method,
                    self.base_url(host),
                    refused.status,
                    refused.code,
                    f"the token server {_without_query(state.realm)} refused the credentials"
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
        self._tokens[(host, scopes)] = (token, time.monotonic() + max(lifetime - 10.0, 1.0))
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
        """Send one request, answering an auth challenge once if the body allows a retry."""
        wanted = tuple(sorted(set(scopes)))
        replayable = content is None or isinstance(content, bytes)
        challenge_seen = False
        while True:
            request_headers = dict(headers or {})
            authorization = await self._authorization(host, wanted)
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
                raise ConnectError(_without_query(request.url), _reason(exc)) from exc
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
            raise _error_from(response, method, str(response.request.url))
        return response

    # -- registry-wide -----------------------------------------------------------------

    async def ping(self, host: str) -> None:
        """GET /v2/: reachable, speaks the API, and accepts our credentials."""
        await self._call("GET", host, self._url(host, "/v2/"))

    async def catalog(self, host: str, *, page_size: int | None = None) -> list[str]:
        return await self._paginate(
            host, "/v2/_catalog", "repositories", ("registry:catalog:*",), page_size
        )

    async def tags(self, ref: Reference, *, page_size: int | None = None) -> list[str]:
        host = _need_host(ref)
        path = f"/v2/{ref.repository}/tags/list"
        return await self._paginate(host, path, "tags", (_pull(ref.repository),), page_size)

    async def _paginate(
        self, host: str, path: str, key: str, scopes: tuple[Scope, ...], page_size: int | None
    ) -> list[str]:
        url = self._url(host, path)
        params: dict[str, str] | None = {"n": str(page_size)} if page_size else None
        items: list[str] = []
        visited: set[str] = set()
        while True:
            response = await self._call("GET", host, url, scopes, params=params)
            try:
                values = response.json().get(key) or []
            except (json.JSONDecodeError, AttributeError):
                raise ProtocolError(f"GET {_without_query(url)}: answer is not JSON") from None
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ProtocolError(f"GET {_without_query(url)}: {key!r} is not a list of names")
            items.extend(values)
            link = _next_link(response)
            if not link:
                return items
            url = str(response.request.url.join(link))
            params = None
            if url in visited:
                raise ProtocolError(f"GET {_without_query(url)}: pagination loops")
            visited.add(url)

    # -- manifests ---------------------------------------------------------------------

    def _manifest_url(self, ref: Reference, identifier: str | None = None) -> str:
        host = _need_host(ref)
        return self._url(host, f"/v2/{ref.repository}/manifests/{identifier or ref.identifier}")

    async def head_manifest(self, ref: Reference) -> ManifestInfo | None:
        """Digest, media type and size of a manifest; None when it does not exist."""
        host = _need_host(ref)
        url = self._manifest_url(ref)
        response = await self._send(
            "HEAD", host, url, (_pull(ref.repository),), headers={"Accept": MANIFEST_ACCEPT}
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _error_from(response, "HEAD", url)
        digest = _header_digest(response)
        length = response.headers.get("Content-Length", "")
        media_type = _base_media_type(response.headers.get("Content-Type"))
        if digest is None or not length.isdigit() or media_type in ("", "application/json"):
            # Some registries leave headers off HEAD; the body tells everything.
            fetched = await self.get_manifest(ref)
            return ManifestInfo(fetched.digest, fetched.media_type, len(fetched.data))
        return ManifestInfo(digest, media_type, int(length), _last_modified(response))

    async def get_manifest(self, ref: Reference) -> FetchedManifest:
        host = _need_host(ref)
        url = self._manifest_url(ref)
        response = await self._call(
            "GET",
            host,
            url,
            (_pull(ref.repository),),
            headers={"Accept": MANIFEST_ACCEPT},
            stream=True,
        )
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > MANIFEST_READ_LIMIT:
                    raise ProtocolError(f"GET {url}: manifest larger than {MANIFEST_READ_LIMIT}")
        finally:
            await response.aclose()
        data = bytes(body)
        algorithm = ref.digest.algorithm if ref.digest else "sha256"
        digest = Digest.of(data, algorithm)
        if ref.digest is not None and digest != ref.digest:
            raise DigestMismatchError(f"GET {url}", str(ref.digest), str(digest))
        media_type = _base_media_type(response.headers.get("Content-Type"))
        if media_type not in mt.MANIFESTS:
            # Generic content types: trust the document's own mediaType field.
            try:
                declared = json.loads(data).get("mediaType")
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                declared = None
            if isinstance(declared, str) and declared:
                media_type = declared
        return FetchedManifest(data, media_type, digest)

    async def put_manifest(
        self,
        ref: Reference,
        data: bytes,
        media_type: str,
        *,
        maintain_referrers_tag: bool = True,
    ) -> PushedManifest:
        """PUT a manifest by tag or digest, byte for byte.

        A manifest with a `subject` pushed to a registry that does not index referrers
        itself (no `OCI-Subject` answer) is also added to the subject's fallback tag,
        as the distribution spec asks clients to do.
        """
        host = _need_host(ref)
        url = self._manifest_url(ref)
        digest = Digest.of(data, ref.digest.algorithm if ref.digest else "sha256")
        response = await self._call(
            "PUT",
            host,
            url,
            (_push(ref.repository),),
            ok=(200, 201, 202, 204),
            headers={"Content-Type": media_type},
            content=data,
        )
        answered = _header_digest(response)
        if answered is not None and answered.algorithm == digest.algorithm and answered != digest:
            raise DigestMismatchError(f"PUT {url}", str(digest), str(answered))
        indexed = "OCI-Subject" in response.headers
        if maintain_referrers_tag and not indexed and b'"subject"' in data:
            manifest = parse_manifest(data, media_type)
            if manifest.subject is not None:
                descriptor = Descriptor(
                    media_type=manifest.media_type,
                    digest=digest,
                    size=len(data),
                    artifact_type=manifest.effective_artifact_type,
                    annotations=manifest.annotations,
                )
                await self._add_to_referrers_tag(ref, manifest.subject.digest, descriptor)
        return PushedManifest(digest, indexed)

    async def _add_to_referrers_tag(
        self, ref: Reference, subject: Digest, descriptor: Descriptor
    ) -> None:
        tag_ref = Reference(ref.host, ref.repository, referrers_tag(subject))
        entries: list[dict[str, Any]] = []
        try:
            existing = await self.get_manifest(tag_ref)
            doc = existing.json()
            if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
                entries = [m for m in doc["manifests"] if isinstance(m, dict)]
        except NotFoundError:
            pass
        if any(m.get("digest") == str(descriptor.digest) for m in entries):
            return
        entries.append(descriptor.to_json())
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
        await self.put_manifest(
            tag_ref,
            json.dumps(index, separators=(",", ":")).encode(),
            mt.OCI_INDEX,
            maintain_referrers_tag=False,
        )

    async def delete_manifest(self, ref: Reference) -> None:
        """DELETE by digest (the manifest and all its tags) or by tag (only that tag)."""
        host = _need_host(ref)
        url = self._manifest_url(ref)
        scopes = (f"repository:{ref.repository}:delete", _pull(ref.repository))
        try:
            await self._call("DELETE", host, url, scopes, ok=(200, 202, 204))
        except ResponseError as exc:
            # Distribution cannot drop a single tag: it answers 400 DIGEST_INVALID (2.8)
            # or 405 UNSUPPORTED. Name that for what it is.
            if ref.digest is None and (
                isinstance(exc, UnsupportedError)
                or (exc.status == 400 and exc.code in ("DIGEST_INVALID", "UNSUPPORTED"))
            ):
                raise UnsupportedError(
                    "DELETE",
                    exc.url,
                    exc.status,
                    exc.code,
                    "this registry cannot delete a tag on its own",
                ) from exc
            raise

    # -- referrers ---------------------------------------------------------------------

    async def referrers(self, ref: Reference, *, artifact_type: str | None = None) -> Referrers:
        """Manifests whose `subject` is `ref.digest`, by the API or its fallback tag."""
        host = _need_host(ref)
        subject = _need_digest(ref)
        url = self._url(host, f"/v2/{ref.repository}/referrers/{subject}")
        params = {"artifactType": artifact_type} if artifact_type else None
        found: list[Descriptor] = []
        filtered = False
        first = True
        while True:
            response = await self._send(
                "GET",
                host,
                url,
                (_pull(ref.repository),),
                headers={"Accept": mt.OCI_INDEX},
                params=params,
            )
            if first and response.status_code in (404, 405):
                return await self._referrers_from_tag(ref, subject, artifact_type)
            if response.status_code != 200:
                raise _error_from(response, "GET", url)
            first = False
            filtered = filtered or "OCI-Filters-Applied" in response.headers
            try:
                found.extend(parse_manifest(response.content, mt.OCI_INDEX).manifests)
            except ManifestError as exc:
                raise ProtocolError(f"GET {url}: referrers answer is not an index: {exc}") from None
            link = _next_link(response)
            if not link:
                break
            url, params = str(response.request.url.join(link)), None
        if artifact_type and not filtered:
            found = [d for d in found if d.artifact_type == artifact_type]
        return Referrers(tuple(found), "api")

    async def _referrers_from_tag(
        self, ref: Reference, subject: Digest, artifact_type: str | None
    ) -> Referrers:
        tag_ref = Reference(ref.host, ref.repository, referrers_tag(subject))
        try:
            index = (await self.get_manifest(tag_ref)).parse()
        except NotFoundError:
            return Referrers((), "tag-schema")
        found = index.manifests
        if artifact_type:
            found = tuple(d for d in found if d.artifact_type == artifact_type)
        return Referrers(found, "tag-schema")

    # -- blobs -------------------------------------------------------------------------

    def _blob_url(self, ref: Reference) -> str:
        return self._url(_need_host(ref), f"/v2/{ref.repository}/blobs/{_need_digest(ref)}")

    async def blob_size(self, ref: Reference) -> int | None:
        """HEAD a blob: its size, or None when the repository does not have it."""
        host = _need_host(ref)
        url = self._blob_url(ref)
        response = await self._send(
            "HEAD", host, url, (_pull(ref.repository),), follow_redirects=True
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _error_from(response, "HEAD", url)
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else 0

    @asynccontextmanager
    async def open_blob(self, ref: Reference, *, verify: bool = True) -> AsyncIterator[BlobStream]:
        """Stream a blob; with `verify`, iterating to the end checks its digest and size."""
        host = _need_host(ref)
        url = self._blob_url(ref)
        response = await self._call(
            "GET", host, url, (_pull(ref.repository),), stream=True, follow_redirects=True
        )
        try:
            yield BlobStream(response, url, _need_digest(ref), verify=verify)
        finally:
            await response.aclose()

    async def get_blob(self, ref: Reference, *, limit: int = 64 * 1024 * 1024) -> bytes:
        """A small blob (a config, a signature) read whole, digest verified."""
        body = bytearray()
        async with self.open_blob(ref) as stream:
            async for chunk in stream.chunks():
                body.extend(chunk)
                if len(body) > limit:
                    raise ProtocolError(f"blob {ref.digest} is larger than {limit} bytes")
        return bytes(body)

    async def mount_blob(self, ref: Reference, from_repository: str) -> bool:
        """Ask the registry to link a blob from another of its repositories."""
        host = _need_host(ref)
        digest = _need_digest(ref)
        url = self._url(host, f"/v2/{ref.repository}/blobs/uploads/")
        response = await self._call(
            "POST",
            host,
            url,
            (_push(ref.repository), _pull(from_repository)),
            ok=(201, 202),
            params={"mount": str(digest), "from": from_repository},
        )
        if response.status_code == 201:
            return True
        # The registry opened an ordinary upload instead; nobody will use it.
        location = response.headers.get("Location")
        if location:
            upload = str(response.request.url.join(location))
            with suppress(ConnectError):
                await (await self._send("DELETE", host, upload, (_push(ref.repository),))).aclose()
        return False

    async def push_blob(
        self,
        ref: Reference,
        content: bytes | AsyncIterable[bytes],
        size: int | None = None,
    ) -> None:
        """Upload a blob to `ref.repository` under `ref.digest`.

        Bytes up to MONOLITHIC_LIMIT go in a single PUT; anything else is streamed in one
        PATCH, hashed on the way, and committed only when it hashes to `ref.digest`.
        """
        host = _need_host(ref)
        digest = _need_digest(ref)
        scopes = (_push(ref.repository),)
        start = self._url(host, f"/v2/{ref.repository}/blobs/uploads/")
        response = await self._call("POST", host, start, scopes, ok=(202,))
        location = _location(response)

        if isinstance(content, bytes) and len(content) <= MONOLITHIC_LIMIT:
            actual = Digest.of(content, digest.algorithm)
            if actual != digest:
                await self._cancel_upload(host, location, scopes)
                raise DigestMismatchError(f"blob for {ref}", str(digest), str(actual))
            await self._call(
                "PUT",
                host,
                str(httpx.URL(location).copy_merge_params({"digest": str(digest)})),
                scopes,
                ok=(201, 204),
                headers={"Content-Type": "application/octet-stream"},
                content=content,
            )
            return

        hasher = Hasher(digest.algorithm)
        source: AsyncIterable[bytes] = (
            _one_chunk(content) if isinstance(content, bytes) else content
        )

        async def hashed() -> AsyncIterator[bytes]:
            async for chunk in source:
                hasher.update(chunk)
                yield chunk

        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        try:
            response = await self._call(
                "PATCH", host, location, scopes, ok=(202, 204), headers=headers, content=hashed()
            )
        except Exception:
            # Best effort: a registry that cannot cancel will expire the session itself.
            with suppress(Exception):
                await self._cancel_upload(host, location, scopes)
            raise
        location = _location(response, default=location)
        actual = hasher.digest()
        if actual != digest:
            await self._cancel_upload(host, location, scopes)
            raise DigestMismatchError(f"blob for {ref}", str(digest), str(actual))
        if size is not None and hasher.size != size:
            await self._cancel_upload(host, location, scopes)
            raise ProtocolError(f"blob {digest}: {hasher.size} bytes sent, {size} expected")
        await self._call(
            "PUT",
            host,
            str(httpx.URL(location).copy_merge_params({"digest": str(digest)})),
            scopes,
            ok=(201, 204),
        )

    async def _cancel_upload(self, host: str, location: str, scopes: tuple[Scope, ...]) -> None:
        try:
            response = await self._send("DELETE", host, location, scopes)
            await response.aclose()
        except ConnectError:
            pass

    async def delete_blob(self, ref: Reference) -> None:
        host = _need_host(ref)
        scopes = (f"repository:{ref.repository}:delete", _pull(ref.repository))
        await self._call("DELETE", host, self._blob_url(ref), scopes, ok=(200, 202, 204))


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _location(response: httpx.Response, default: str | None = None) -> str:
    value = response.headers.get("Location")
    if not value:
        if default is not None:
            return default
        raise ProtocolError(
            f"{response.request.method} {_without_query(response.request.url)}: "
            "upload answer has no Location"
        )
    return str(response.request.url.join(value))


def _last_modified(response: httpx.Response) -> datetime | None:
    value = response.headers.get("Last-Modified")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


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


def _error_from(response: httpx.Response, method: str, url: str) -> ResponseError:
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
    where = _without_query(url)
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
