"""`/auth/...`: the token service (the `realm` of regd's challenges) and its public keys.

GET  /auth/token       Basic credentials (or none: anonymous), `service`, `scope` (repeated),
                       `offline_token=true` for a refresh token: Docker's token specification.
POST /auth/token       the OAuth2 form (grant_type password or refresh_token) docker uses.
GET  /auth/jwks.json   the verifying keys as a JWKS.
GET  /auth/certs.pem   the same keys' certificates: Distribution's `rootcertbundle`.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import parse_qsl

from quart import Blueprint, Response, current_app, request

from regd.api.auth import Gate, realm_of
from regd.api.http import json_response
from regd.auth.errors import AuthError, Unauthenticated
from regd.auth.keys import KeyRing
from regd.errors import RegistryError, SizeInvalid

bp = Blueprint("token", __name__, url_prefix="/auth")

# An OAuth2 token form holds a user name, a password or refresh token and a few scopes.
MAX_FORM_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store"}


def _gate() -> Gate:
    return cast(Gate, current_app.config["REGD_AUTH"])


def _keys() -> KeyRing:
    issuer = _gate().authenticator.issuer
    assert issuer is not None  # the gate's authenticator always runs the token service
    return issuer.keys


def _refused(error: AuthError) -> RegistryError:
    gate = _gate()
    refused = gate.refusal(
        error,
        None,
        realm_of("", request.scheme, request.host),
        credentials=request.method == "POST" or "Authorization" in request.headers,
    )
    if isinstance(error, Unauthenticated):
        # Credentials for the token service itself are Basic ones.
        refused.headers["www-authenticate"] = f'Basic realm="{gate.authenticator.service}"'
    return refused


@bp.route("/token", methods=["GET"])
async def get_token() -> Response:
    try:
        answer = await _gate().authenticator.basic_token_response(
            request.headers.get("Authorization"),
            request.remote_addr or "",
            service=request.args.get("service"),
            scopes=request.args.getlist("scope"),
            offline_token=request.args.get("offline_token", "").lower() == "true",
        )
    except AuthError as error:
        raise _refused(error) from None
    return json_response(answer, headers=_NO_STORE)


@bp.route("/token", methods=["POST"])
async def post_token() -> Response:
    size = 0
    parts: list[bytes] = []
    async for chunk in request.body:
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise SizeInvalid(f"a token request is at most {MAX_FORM_BYTES} bytes")
        parts.append(chunk)
    try:
        pairs = parse_qsl(b"".join(parts).decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        pairs = []
    form: dict[str, str] = {}
    for key, value in pairs:
        # Repeated scope fields add up, as the OAuth2 form's space-separated list does.
        form[key] = f"{form[key]} {value}" if key == "scope" and key in form else value
    try:
        answer = await _gate().authenticator.oauth_token(form, request.remote_addr or "")
    except AuthError as error:
        raise _refused(error) from None
    return json_response(answer, headers=_NO_STORE)


@bp.route("/jwks.json", methods=["GET"])
async def jwks() -> Response:
    return json_response(_keys().jwks())


@bp.route("/certs.pem", methods=["GET"])
async def certificates() -> Response:
    return Response(_keys().certificate_bundle(), content_type="application/x-pem-file")
