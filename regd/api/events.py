"""`/admin/v1/events`: the operators' view of the event delivery queues (the admin right,
as the rest of the admin API)."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, request

from regd import events
from regd.api import admin
from regd.api.admin import BadRequest
from regd.api.http import exchange, json_response
from regd.config import Config

bp = Blueprint("events", __name__, url_prefix="/admin/v1")
bp.before_request(admin.authorize)


def _config() -> Config:
    config: Config = current_app.config["REGD_CONFIG"]
    return config


def _endpoint_arg(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest("endpoint must be an endpoint's name")
    return value


@bp.route("/events", methods=["GET"])
async def queues() -> Response:
    failed = request.args.get("failed", "").lower() in ("1", "true", "yes")
    endpoints = await events.status(
        exchange().registry.metadata,
        _config(),
        endpoint=request.args.get("endpoint") or None,
        failed=failed,
    )
    return json_response({"endpoints": endpoints})


@bp.route("/events/retry", methods=["POST"])
async def retry() -> Response:
    doc = await admin.body()
    names = await events.retry(
        exchange().registry.metadata, _config(), _endpoint_arg(doc.get("endpoint"))
    )
    return json_response({"retried": names})


@bp.route("/events/drop", methods=["POST"])
async def drop() -> Response:
    doc = await admin.body()
    endpoint = _endpoint_arg(doc.get("endpoint"))
    if endpoint is None:
        raise BadRequest("drop needs the endpoint whose events to drop")
    through = doc.get("through")
    if through is not None and (
        isinstance(through, bool) or not isinstance(through, int) or through < 0
    ):
        raise BadRequest("through must be an event sequence number")
    dropped = await events.drop(exchange().registry.metadata, _config(), endpoint, through)
    return json_response({"endpoint": endpoint, "dropped": dropped})
