"""The pull-through cache: repositories under a mirror's prefix are served from its
upstream registry and kept; the registry layer asks here when such a repository misses.

    routing     which repositories a mirror serves, and the refusal of pushes into them
    upstream    the shared registry client (regd.client) pointed at one upstream
    flights     single-flight: one upstream fetch per blob or manifest per process
    service     `Mirrors`: freshness, streaming fills, serving stale, eviction
    errors      UpstreamError
"""

from regd.mirror.errors import UpstreamError
from regd.mirror.routing import Route, Routes
from regd.mirror.service import LiveBlob, Mirrors

__all__ = ["LiveBlob", "Mirrors", "Route", "Routes", "UpstreamError"]
