"""What a mirror raises when its upstream fails it: a backend failure of regd (503 with
Retry-After), not the client's fault. The answer names the mirror and its upstream; the
log line carries the cause."""

from __future__ import annotations

from regd.errors import BackendError


class UpstreamError(BackendError):
    """The upstream registry could not be reached, refused us, or broke off a transfer."""

    kind = "upstream"
    retry_after = 10

    def __init__(self, prefix: str, upstream: str, cause: str) -> None:
        super().__init__(f"mirror {prefix} ({upstream}): {cause}")
        self.prefix = prefix
        self.upstream = upstream
        self.cause = cause
        # The answer says "the registry's <kind> failed": make that name the upstream.
        self.kind = f"upstream {upstream} (mirror {prefix})"  # type: ignore[misc]
