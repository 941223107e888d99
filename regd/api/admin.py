"""`/admin/v1/...`: storage lifecycle for operators (garbage collection, usage, retention,
maintenance mode).

Not part of the distribution API. With authentication on (regd.api.auth) it needs the admin
right, or `Authorization: Bearer <admin_token>`; being on loopback grants nothing. With it off,
only loopback clients may call it without an `admin_token`; with one, every call must carry
`Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, cast

import trio
from quart import Blueprint, Response, current_app, request

from regd import __version__
from regd.api.http import exchange, json_response
from regd.api.origin import quart_origin
from regd.config import Config
from regd.errors import Denied, RegistryError, Unauthorized
from regd.oci.manifest import nesting_problem
from regd.registry import Mirrors, Policy, RetentionPolicy

bp = Blueprint("admin", __name__, url_prefix="/admin/v1")


class BadRequest(RegistryError):
    # The spec's code table has no generic code for a malformed request; UNSUPPORTED
    # covers "an invalid set of parameters".
    code = "UNSUPPORTED"


@bp.before_request
async def authorize() -> None:
    if current_app.config.get("REGD_AUTH") is not None:
        return  # the gate (regd.api.auth) has asked for the admin right already
    token: str | None = current_app.config.get("REGD_ADMIN_TOKEN")
    if token:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("the admin API needs Authorization: Bearer <admin_token>")
        return
    try:
        loopback = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Denied("the admin API answers loopback clients only unless admin_token is set")


async def body() -> dict[str, Any]:
    # Bounded by the app's MAX_CONTENT_LENGTH: a longer body is refused with 413.
    raw = cast(bytes, await request.get_data(as_text=False))
    if not raw:
        return {}
    problem = nesting_problem(raw)
    if problem is not None:
        raise BadRequest(f"the body is not acceptable JSON: {problem}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body must be a JSON object: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    return doc


def _flag(doc: dict[str, Any], key: str, default: bool = False) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def _number(doc: dict[str, Any], key: str, default: float | None) -> float | None:
    value = doc.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadRequest(f"{key} must be a non-negative number")
    return float(value)


@bp.route("/gc", methods=["POST"])
async def collect() -> Response:
    doc = await body()
    defaults: Policy = current_app.config["REGD_GC_POLICY"]
    policy = Policy(
        grace_seconds=_number(doc, "grace_seconds", defaults.grace_seconds) or 0.0,
        delete_untagged=_flag(doc, "delete_untagged"),
        delete_orphan_referrers=_flag(doc, "delete_orphan_referrers"),
        upload_max_age=_number(doc, "upload_max_age", defaults.upload_max_age) or 0.0,
    )
    plan = await exchange().registry.lifecycle.collect(policy, dry_run=_flag(doc, "dry_run"))
    metrics = current_app.config.get("REGD_METRICS")
    if metrics is not None and not plan.dry_run:
        metrics.collected("admin", plan.bytes_freed, plan.seconds)
    return json_response(plan.to_json())


# Entries of a list encoded per call: json's C encoder holds the GIL for a whole call, and
# a report's tag list at 100,000 tags takes it for about half a second.
ENCODE_SLICE = 1000
_ENCODE_THREAD = trio.CapacityLimiter(1)


def _encode(doc: Any) -> Iterator[str]:
    """`doc` as compact JSON, in pieces small enough that other threads (the event loop)
    get the GIL between them."""
    if isinstance(doc, dict) and doc:
        sep = "{"
        for key, value in doc.items():
            yield sep + json.dumps(str(key)) + ":"
            yield from _encode(value)
            sep = ","
        yield "}"
    elif isinstance(doc, list) and len(doc) > ENCODE_SLICE:
        sep = "["
        for start in range(0, len(doc), ENCODE_SLICE):
            piece = doc[start : start + ENCODE_SLICE]
            yield sep + ",".join(json.dumps(item, separators=(",", ":")) for item in piece)
            sep = ","
        yield "]"
    else:
        yield json.dumps(doc, separators=(",", ":"))


@bp.route("/usage", methods=["GET"])
async def usage() -> Response:
    repository = request.args.get("repository") or None
    defaults: Policy = current_app.config["REGD_GC_POLICY"]
    registry = exchange().registry
    report = await registry.lifecycle.usage(repository, grace_seconds=defaults.grace_seconds)
    report["quotas"] = await registry.quotas.report(repository)
    body = await trio.to_thread.run_sync(lambda: "".join(_encode(report)), limiter=_ENCODE_THREAD)
    return Response(body, content_type="application/json")


@bp.route("/maintenance", methods=["GET"])
async def maintenance_state() -> Response:
    return json_response((await exchange().registry.maintenance.state()).to_json())


@bp.route("/maintenance", methods=["PUT"])
async def switch_maintenance() -> Response:
    doc = await body()
    if not isinstance(doc.get("enabled"), bool):
        raise BadRequest("enabled must be true or false")
    message = doc.get("message")
    if message is not None and not isinstance(message, str):
        raise BadRequest("message must be a string")
    x = exchange()
    state = await x.registry.maintenance.switch(doc["enabled"], message)
    if x.viewer is not None:  # audit (regd.api.auth)
        await x.viewer.audit("maintenance-on" if state.enabled else "maintenance-off", None)
    return json_response(state.to_json())


# This module is loaded as the process starts serving: uptime counts from here.
_LOADED = time.monotonic()


@bp.route("/status", methods=["GET"])
async def status() -> Response:
    """What `regctl status` shows, cheap enough to ask often (usage reads every row)."""
    registry = exchange().registry
    sweep_until = await registry.browsing.collection_running_until()
    config: Config = current_app.config["REGD_CONFIG"]
    return json_response(
        {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - _LOADED, 1),
            # The processes of this regd, however the number was arrived at (regd.config).
            "workers": config.workers,
            **await registry.lifecycle.status(),
            "collection": {"running": sweep_until is not None, "lease_until": sweep_until},
        }
    )


@bp.route("/repositories/<path:name>", methods=["DELETE"])
async def delete_repository(name: str) -> Response:
    dry_run = request.args.get("dry_run", "").lower() in ("1", "true", "yes")
    x = exchange()
    if not dry_run:
        await x.registry.maintenance.check_writable()
    result = await x.registry.repositories.delete(name, dry_run=dry_run, origin=quart_origin())
    if x.viewer is not None and not dry_run:  # audit (regd.api.auth)
        await x.viewer.audit("delete-repository", name)
    return json_response(result)


@bp.route("/repositories/<path:name>/prune", methods=["POST"])
async def prune(name: str) -> Response:
    doc = await body()
    keep_last = doc.get("keep_last")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)):
        raise BadRequest("keep_last must be an integer")
    keep = doc.get("keep")
    if keep is not None and not isinstance(keep, str):
        raise BadRequest("keep must be a regular expression string")
    policy = RetentionPolicy(
        keep_last=keep_last, keep=keep, older_than=_number(doc, "older_than", None)
    )
    if not _flag(doc, "dry_run"):
        await exchange().registry.maintenance.check_writable()
    result = await exchange().registry.repositories.prune(
        name, policy, dry_run=_flag(doc, "dry_run"), origin=quart_origin()
    )
    return json_response(result)


def _mirrors() -> Mirrors:
    mirrors = exchange().registry.mirrors
    if mirrors is None:
        raise BadRequest("this regd has no pull-through cache ([[mirror]] in its configuration)")
    return mirrors


def _text(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


@bp.route("/cache", methods=["GET"])
async def cache_list() -> Response:
    """What the pull-through caches hold, least recently pulled first."""
    mirrors = _mirrors()
    entries = await mirrors.entries(request.args.get("mirror") or None)
    return json_response(
        {"mirrors": await mirrors.usage(), "entries": [asdict(e) for e in entries]}
    )


@bp.route("/cache/evict", methods=["POST"])
async def cache_evict() -> Response:
    doc = await body()
    evicted = await _mirrors().remove(
        _text(doc, "mirror"), _text(doc, "repository"), _text(doc, "digest")
    )
    return json_response({"evicted": [asdict(e) for e in evicted]})


@bp.route("/verify", methods=["POST"])
async def verify() -> Response:
    doc = await body()
    defaults: Policy = current_app.config["REGD_GC_POLICY"]
    report = await exchange().registry.integrity.verify(
        repair=_flag(doc, "repair"),
        grace_seconds=_number(doc, "grace_seconds", defaults.grace_seconds) or 0.0,
    )
    return json_response(report.to_json())


@bp.route("/import-registry2", methods=["POST"])
async def import_registry2() -> Response:
    doc = await body()
    root = doc.get("root")
    if not isinstance(root, str) or not root:
        raise BadRequest("root must be the path of a Distribution storage root on this host")
    if not _flag(doc, "dry_run"):
        await exchange().registry.maintenance.check_writable()
    report = await exchange().registry.adoption.import_root(root, dry_run=_flag(doc, "dry_run"))
    return json_response(report.to_json())
