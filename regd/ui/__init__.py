"""The web UI at /ui/: pages rendered on the server from the registry layer's queries.

Quart-Trio blueprint and Jinja templates (autoescaped: everything a client pushed renders as
text). The UI authenticates its own requests with a session cookie (regd.ui.session) and
asks the same policy as the API; the edge's gate lets /ui/ through for that reason.
"""

from __future__ import annotations

from regd.ui.views import bp, install

__all__ = ["bp", "install"]
