"""`/admin/v1/users`, `/admin/v1/tokens`, `/admin/v1/audit`: accounts, machine tokens and
the audit trail, for operators (the admin right, as the rest of the admin API).

Passwords arrive in JSON bodies (never in a URL) and are hashed off the event loop; a machine
token's secret is in the answer that creates it and nowhere else, ever.
"""

from __future__ import annotations

import re
from typing import Any

from quart import Blueprint, Response, current_app, request

from regd.api import admin
from regd.api.admin import BadRequest
from regd.api.http import exchange, json_response
from regd.auth import create_machine_token, hash_password
from regd.auth.passwords import PasswordError
from regd.durations import duration_seconds
from regd.errors import Conflict, NameUnknown
from regd.metadata import accounts as rows

bp = Blueprint("accounts", __name__, url_prefix="/admin/v1")
bp.before_request(admin.authorize)

_ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_GROUP = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_AUDIT = 10_000


class AccountUnknown(NameUnknown):
    """The account (or machine token) a request names is not stored."""


def _account_name(name: Any) -> str:
    if not isinstance(name, str) or not _ACCOUNT.match(name):
        raise BadRequest(
            f"bad account name {str(name)[:64]!r}: letters, digits, '.', '_', '@', '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return name


def _groups(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(v, str) and _GROUP.match(v) for v in value
    ):
        raise BadRequest("groups must be a list of names of letters, digits, '.', '_', '-'")
    return list(value)


async def _hashed(doc: dict[str, Any]) -> str:
    password = doc.get("password")
    if not isinstance(password, str):
        raise BadRequest("password must be a string")
    try:
        return await hash_password(password)
    except PasswordError as exc:
        raise BadRequest(str(exc)) from None


def _forget_credentials() -> None:
    """A changed or removed account's remembered logins and access tokens end now in this
    process; every other worker and replica refuses them once its copy of the revocations
    is refreshed (regd.auth.revocation: within REFRESH seconds)."""
    gate = current_app.config.get("REGD_AUTH")
    if gate is not None:
        gate.authenticator.cache.clear()
        gate.authenticator.revocations.expire()


def _account_json(account: rows.Account) -> dict[str, Any]:
    return {
        "name": account.name,
        "groups": list(account.groups),
        "created_at": account.created_at,
        "disabled": account.disabled,
        "source": "database",
    }


@bp.route("/users", methods=["GET"])
async def list_users() -> Response:
    users = [_account_json(a) for a in await rows.list_accounts(exchange().registry.metadata)]
    gate = current_app.config.get("REGD_AUTH")
    if gate is not None:
        users += [
            {"name": name, "groups": [], "source": "htpasswd"}
            for name in sorted(gate.authenticator.htpasswd)
        ]
    return json_response({"users": users})


@bp.route("/users", methods=["POST"])
async def add_user() -> Response:
    doc = await admin.body()
    name = _account_name(doc.get("name"))
    groups = _groups(doc.get("groups"))
    hashed = await _hashed(doc)
    try:
        store = exchange().registry.metadata
        await rows.add_account(store, name, hashed, groups, store.clock.now())
    except rows.AccountExists as exc:
        raise Conflict(str(exc)) from None
    restart = current_app.config.get("REGD_AUTH") is None
    return json_response({"name": name, "groups": sorted(set(groups)), "restart": restart}, 201)


@bp.route("/users/<name>/password", methods=["PUT"])
async def change_password(name: str) -> Response:
    doc = await admin.body()
    hashed = await _hashed(doc)
    if not await rows.update_account(exchange().registry.metadata, name, password_hash=hashed):
        raise AccountUnknown(f"no account {name[:64]!r}")
    _forget_credentials()
    return json_response({"name": name})


@bp.route("/users/<name>/groups", methods=["PUT"])
async def set_groups(name: str) -> Response:
    doc = await admin.body()
    groups = _groups(doc.get("groups"))
    if not await rows.update_account(exchange().registry.metadata, name, groups=groups):
        raise AccountUnknown(f"no account {name[:64]!r}")
    _forget_credentials()
    return json_response({"name": name, "groups": sorted(set(groups))})


@bp.route("/users/<name>/disabled", methods=["PUT"])
async def set_disabled(name: str) -> Response:
    doc = await admin.body()
    disabled = doc.get("disabled")
    # Required, not defaulted: a body that forgot the key must not enable an account.
    if not isinstance(disabled, bool):
        raise BadRequest("disabled must be true or false")
    if not await rows.update_account(exchange().registry.metadata, name, disabled=disabled):
        raise AccountUnknown(f"no account {name[:64]!r}")
    _forget_credentials()
    return json_response({"name": name, "disabled": disabled})


@bp.route("/users/<name>", methods=["DELETE"])
async def remove_user(name: str) -> Response:
    if not await rows.remove_account(exchange().registry.metadata, name):
        raise AccountUnknown(f"no account {name[:64]!r}")
    _forget_credentials()
    return json_response({"name": name, "removed": True})


def _token_json(token: rows.MachineToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "owner": token.owner,
        "scopes": list(token.scopes),
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
        "revoked": token.revoked,
    }


@bp.route("/tokens", methods=["POST"])
async def create_token() -> Response:
    doc = await admin.body()
    owner = _account_name(doc.get("owner"))
    name, scopes, expires = doc.get("name"), doc.get("scopes"), doc.get("expires_in")
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("scopes must be a list of strings such as repository:team/*:pull")
    try:
        lifetime = None if expires is None else duration_seconds(expires)
        store = exchange().registry.metadata
        token, secret = await create_machine_token(
            store,
            store.clock,
            owner=owner,
            name=name,
            scopes=scopes,
            expires_in=lifetime,
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    except rows.NoSuchAccount as exc:
        raise AccountUnknown(str(exc)) from None
    return json_response({**_token_json(token), "secret": secret}, 201)


@bp.route("/tokens", methods=["GET"])
async def list_tokens() -> Response:
    owner = request.args.get("owner") or None
    tokens = await rows.list_machine_tokens(exchange().registry.metadata, owner)
    return json_response({"tokens": [_token_json(t) for t in tokens]})


@bp.route("/tokens/<token_id>", methods=["DELETE"])
async def revoke_token(token_id: str) -> Response:
    if not await rows.revoke_machine_token(exchange().registry.metadata, token_id):
        raise AccountUnknown(f"no unrevoked machine token {token_id[:40]!r}")
    _forget_credentials()
    return json_response({"id": token_id, "revoked": True})


def _since(raw: str | None) -> float | None:
    """Epoch seconds (`1767225600`), or an age with its unit (`90m`, `24h`, `7d`)."""
    if not raw:
        return None
    text = raw.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return exchange().registry.metadata.clock.now() - duration_seconds(text)
    except ValueError:
        raise BadRequest(
            f"since must be epoch seconds or an age such as 24h, not {raw[:40]!r}"
        ) from None


@bp.route("/audit", methods=["GET"])
async def audit() -> Response:
    limit_text = request.args.get("limit", "1000")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_AUDIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_AUDIT}")
    records = await rows.list_audit(
        exchange().registry.metadata,
        repository=request.args.get("repository") or None,
        since=_since(request.args.get("since")),
        limit=int(limit_text),
    )
    return json_response(
        {
            "records": [
                {
                    "ts": r.ts,
                    "actor": r.actor,
                    "action": r.action,
                    "outcome": r.outcome,
                    "repository": r.repository,
                    "reference": r.reference,
                    "remote_addr": r.remote_addr,
                    "detail": r.detail,
                }
                for r in records
            ]
        }
    )
