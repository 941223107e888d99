"""What operators see of the event queues, and what they may do to them."""

from __future__ import annotations

from typing import Any

from regd.config import Config
from regd.errors import NameUnknown
from regd.metadata import MetadataStore


class EventsUnknown(NameUnknown):
    """No endpoint of that name is configured or has events waiting."""


async def status(
    store: MetadataStore, config: Config, *, endpoint: str | None = None, failed: bool = False
) -> list[dict[str, Any]]:
    """Each endpoint's queue: configured ones, and any that still has events waiting."""
    states = {s.name: s for s in await store.event_states()}
    configured = {e.name: e for e in config.event_endpoints}
    out = []
    for name in sorted(set(states) | set(configured)):
        if endpoint is not None and name != endpoint:
            continue
        state = states.get(name)
        doc: dict[str, Any] = (
            state.to_json()
            if state is not None
            else {
                "name": name,
                "pending": 0,
                "oldest_seq": None,
                "oldest_at": None,
                "failures": 0,
                "last_error": None,
                "last_error_at": None,
                "last_delivered_at": None,
                "delivered": 0,
                "next_attempt_at": 0.0,
            }
        )
        settings = configured.get(name)
        doc["configured"] = settings is not None
        doc["url"] = None if settings is None else settings.url
        doc["failing"] = settings is not None and doc["failures"] >= settings.threshold
        if failed and not doc["failures"]:
            continue
        out.append(doc)
    if endpoint is not None and not out and not failed:
        raise EventsUnknown(f"event endpoint {endpoint} is not configured", {"name": endpoint})
    return out


async def retry(store: MetadataStore, config: Config, endpoint: str | None) -> list[str]:
    """Clear the backoff of failing endpoints (or of one), so they try again at once."""
    if endpoint is not None:
        await status(store, config, endpoint=endpoint)
    return await store.retry_events(endpoint)


async def drop(store: MetadataStore, config: Config, endpoint: str, through: int | None) -> int:
    """Give up on an endpoint's waiting events (up to sequence `through`, or all)."""
    await status(store, config, endpoint=endpoint)
    return await store.drop_events(endpoint, through)


__all__ = ["EventsUnknown", "drop", "retry", "status"]
