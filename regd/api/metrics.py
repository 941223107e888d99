"""`/metrics`: every worker's series, merged, in Prometheus' text format.

Registered only when metrics are on. With authentication on, the gate (regd.api.auth)
asks for the admin right, as for the admin API.
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response, current_app

from regd.observability.metrics import CONTENT_TYPE, Metrics

bp = Blueprint("metrics", __name__)

# Merging reads every worker's files; a few scrapes at once are plenty.
_limiter = trio.CapacityLimiter(2)


@bp.route("/metrics", methods=["GET"])
async def metrics() -> Response:
    source: Metrics = current_app.config["REGD_METRICS"]
    body = await trio.to_thread.run_sync(source.exposition, limiter=_limiter)
    return Response(body, content_type=CONTENT_TYPE)
