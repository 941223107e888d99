"""`/v2/`: the version check every client makes first."""

from __future__ import annotations

from quart import Blueprint, Response

from regd.api.http import json_response

bp = Blueprint("base", __name__)


@bp.route("/v2/", methods=["GET"])
async def version_check() -> Response:
    return json_response({})
