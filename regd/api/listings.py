"""Tag lists, the catalog and referrers: paged, sorted listings."""

from __future__ import annotations

from quart import Blueprint, Response, request

from regd.api.http import exchange, json_response, next_link, stale_warning
from regd.oci import mediatypes as mt
from regd.registry import page_size

bp = Blueprint("listings", __name__)


@bp.route("/v2/<path:name>/tags/list", methods=["GET"])
async def tags_list(name: str) -> Response:
    n = page_size(request.args.get("n"))
    last = request.args.get("last") or None
    page = await exchange().registry.listings.tags(name, n, last)
    headers = {}
    if page.more and n and page.items:
        headers["Link"] = next_link(f"/v2/{name}/tags/list", n, page.items[-1])
    return json_response({"name": name, "tags": page.items}, headers=headers)


@bp.route("/v2/_catalog", methods=["GET"])
async def catalog() -> Response:
    n = page_size(request.args.get("n"))
    last = request.args.get("last") or None
    x = exchange()
    # Only what the caller may pull (regd.api.auth); everything with authentication off.
    visible = None if x.viewer is None else x.viewer.may_pull
    page = await x.registry.listings.catalog(n, last, visible)
    headers = {}
    if page.more and n and page.items:
        headers["Link"] = next_link("/v2/_catalog", n, page.items[-1])
    return json_response({"repositories": page.items}, headers=headers)


@bp.route("/v2/<path:name>/referrers/<digest>", methods=["GET"])
async def referrers(name: str, digest: str) -> Response:
    artifact_type = request.args.get("artifactType") or None
    result = await exchange().registry.listings.referrers(name, digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if result.filtered else {}
    if result.stale is not None:
        headers["Warning"] = stale_warning(result.stale)
    return json_response(result.index, headers=headers, content_type=mt.OCI_INDEX)
