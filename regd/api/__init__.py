"""The registry HTTP API: one module per resource, HTTP in, domain calls out."""

from __future__ import annotations

from quart import Blueprint

from regd.api import admin, base, blobs, listings, manifests, uploads

BLUEPRINTS: tuple[Blueprint, ...] = (
    base.bp,
    uploads.bp,
    blobs.bp,
    manifests.bp,
    listings.bp,
    admin.bp,
)

__all__ = ["BLUEPRINTS"]
