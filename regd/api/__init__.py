"""The registry HTTP API: one module per resource, HTTP in, domain calls out."""

from __future__ import annotations

from quart import Blueprint

from regd.api import (
    accounts,
    admin,
    base,
    blobs,
    events,
    health,
    listings,
    manifests,
    metrics,
    uploads,
)
from regd.api.direct import Route, Router

BLUEPRINTS: tuple[Blueprint, ...] = (
    base.bp,
    listings.bp,
    admin.bp,
    accounts.bp,
    events.bp,
    health.bp,
)

# Served below Quart (see regd.api.direct); matched before any blueprint.
DIRECT_ROUTES: tuple[Route, ...] = (
    uploads.start_upload,
    uploads.upload_session,
    manifests.get_manifest,
    manifests.put_manifest,
    manifests.delete_manifest,
    blobs.get_blob,
    blobs.delete_blob,
)

# Registered only when metrics are on.
METRICS_BLUEPRINT = metrics.bp

__all__ = ["BLUEPRINTS", "DIRECT_ROUTES", "METRICS_BLUEPRINT", "Router"]
