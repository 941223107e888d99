"""Token issue rate: Basic credentials to regd's token service for a one-repository scope,
as each `docker pull` of a new repository does. Distribution issues no tokens."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from bench import loadgen
from bench.servers import Server
from bench.settings import Settings
from bench.workloads import hot


def run(server: Server, settings: Settings) -> dict[str, Any]:
    if server.credentials.mode == "none":
        return {"skipped": "regd runs its token service only with --auth basic or token"}
    creds = server.credentials
    scope = quote(f"repository:{hot.REPO}:pull")
    target = f"/auth/token?service={quote(creds.service)}&scope={scope}"
    spec = loadgen.RequestSpec("GET", target, {"Authorization": creds.basic})
    result = loadgen.closed_loop(
        server.host,
        server.port,
        [spec],
        settings.hot_clients,
        settings.hot_seconds,
        settings.loadgen_processes,
    ).as_dict()
    result["tokens_s"] = result["req_s"]
    return result
