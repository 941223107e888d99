"""Delivering the outbox: one task per endpoint, at least once, in order, one replica at a time.

Each endpoint has a lease (`events:<name>`) in the database; the replica holding it is the
only one posting that endpoint's events, so each event is sent by one replica (twice only
if the holder loses its lease in the middle of a delivery, which at-least-once allows).
The queue and the backoff state live in the database, so a restart or another replica
carries on where the last holder stopped.

A delivery is one POST of up to `event_batch` events in Distribution's envelope. Any 2xx
answer takes them off the endpoint's queue; anything else (an error answer, a refused
connection, a timeout) leaves them there and the next attempt waits: briefly for the
first `threshold` failures in a row, then `backoff`, doubling with each failure up to
MAX_BACKOFF. Nothing is ever given up on: an operator may drop events (`regctl events
drop`) or make a failing endpoint try again at once (`regctl events retry`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import random
import re
import socket
import uuid
from collections.abc import Sequence

import httpx
import trio

from regd.config import Config, EventEndpoint
from regd.metadata import MetadataError, MetadataStore
from regd.metadata.outbox import EndpointFilter, EventRouting, PendingEvent

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
# `sha256=<hex>`: HMAC-SHA256 of the request body under the endpoint's secret.
SIGNATURE_HEADER = "X-Regd-Signature"
# The wait between attempts never grows past this (unless `backoff` itself is longer).
MAX_BACKOFF = 300.0
# Between the first failures in a row, before `threshold` says the endpoint is down.
QUICK_RETRY = 0.1
# How often pulls noted in memory are written to the outbox.
PULL_FLUSH_SECONDS = 1.0
# A task that failed for a reason of its own (the database away) starts again after this.
RESTART_SECONDS = 5.0
# Bytes of an error answer's body kept for `regctl events`.
ERROR_BODY = 300
# Bytes of a success answer's body read so that its connection can carry the next delivery.
MAX_DRAINED = 64 * 1024

log = logging.getLogger("regd.events")


def routing_for(config: Config) -> EventRouting:
    """Which endpoints the metadata store writes events for, and this node's source record."""
    return EventRouting(
        endpoints=tuple(
            EndpointFilter(
                name=e.name,
                ignored_actions=frozenset(e.ignored_actions),
                ignored_media_types=frozenset(e.ignored_media_types),
                repositories=None if e.repositories is None else re.compile(e.repositories),
                pulls=config.event_pulls if e.pulls is None else e.pulls,
                fills=config.event_fills if e.fills is None else e.fills,
            )
            for e in config.event_endpoints
        ),
        source_addr=f"{socket.gethostname()}:{config.port}",
    )


def envelope(events: Sequence[PendingEvent]) -> bytes:
    """The request body: the events as they were rendered when they happened."""
    return b'{"events":[' + ",".join(e.body for e in events).encode() + b"]}"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def lease_seconds(endpoint: EventEndpoint) -> float:
    """Long enough that a holder renewing at a third of it always has two timeouts left."""
    return max(30.0, 6 * endpoint.timeout)


def retry_delay(endpoint: EventEndpoint, failures: int) -> float:
    if failures < endpoint.threshold:
        return QUICK_RETRY
    return float(
        min(
            endpoint.backoff * 2 ** min(failures - endpoint.threshold, 32),
            max(MAX_BACKOFF, endpoint.backoff),
        )
    )


class Deliverer:
    """Delivers one endpoint's events while this process holds its lease."""

    def __init__(
        self,
        store: MetadataStore,
        endpoint: EventEndpoint,
        client: httpx.AsyncClient,
        *,
        batch: int,
        poll_interval: float,
    ) -> None:
        self._store = store
        self.endpoint = endpoint
        self._client = client
        self._batch = batch
        self._poll = poll_interval
        self._lease = f"events:{endpoint.name}"
        self._holder = str(uuid.uuid4())
        self._ttl = lease_seconds(endpoint)
        self._renewed_at: float | None = None
        # Failures in a row as this holder last wrote them; None: to be read (on taking
        # the lease, and while failing, when an operator may clear them).
        self._failures: int | None = None
        # Configured headers may repeat a name (Distribution takes a list per name).
        self._headers = [("content-type", ENVELOPE_MEDIA_TYPE), *endpoint.headers]

    async def run(self) -> None:
        """Deliver forever; a failure of the database ends only the current round."""
        while True:
            try:
                await self.step()
            except MetadataError as exc:
                self._renewed_at = None
                log.warning("endpoint=%s paused: %s", self.endpoint.name, exc)
                await trio.sleep(RESTART_SECONDS)
            except Exception:
                # Delivery must outlive its own mistakes; the events wait in the outbox.
                self._renewed_at = None
                log.exception("endpoint=%s delivery failed", self.endpoint.name)
                await trio.sleep(RESTART_SECONDS)

    async def step(self) -> None:
        """One round: take or keep the lease, then deliver a batch or wait."""
        if not await self._hold_lease():
            # Another replica delivers; check now and then whether it still does.
            await trio.sleep(self._ttl / 3 * random.uniform(0.8, 1.0))
            return
        failures = self._failures
        if failures is None:
            failures, due = await self._store.endpoint_state(self.endpoint.name)
            wait = due - self._store.clock.now()
            if wait > 0:
                # In slices, so that an operator's retry (which clears `due`) is seen soon.
                await trio.sleep(min(wait, max(self._poll, 1.0)))
                return
        events = await self._store.pending_events(self.endpoint.name, self._batch)
        if not events:
            await trio.sleep(self._poll)
            return
        # A delivery under way is finished and its outcome written even when the server
        # stops (both are bounded): cut short, it would reach the endpoint again from the
        # next holder of the lease.
        with trio.CancelScope(shield=True):
            delivered = await self._deliver(events, failures)
        self._failures = 0 if delivered else None
        if delivered and len(events) < self._batch:
            # Caught up: let events gather for a while rather than post (and write the
            # acknowledgement of) every few as they come, which under a stream of pushes
            # would add a transaction of its own for every one or two of theirs.
            await trio.sleep(self._poll)

    async def _deliver(self, events: Sequence[PendingEvent], failures: int) -> bool:
        error = await self.post(events)
        if error is None:
            await self._store.events_delivered(self.endpoint.name, [e.seq for e in events])
            if failures:
                log.info(
                    "endpoint=%s delivering again after %d failures", self.endpoint.name, failures
                )
            return True
        delay = retry_delay(self.endpoint, failures + 1)
        failures = await self._store.delivery_failed(
            self.endpoint.name, error, self._store.clock.now() + delay
        )
        if failures == self.endpoint.threshold:
            log.warning(
                "endpoint=%s is failing (%d attempts in a row): %s",
                self.endpoint.name,
                failures,
                error,
            )
        return False

    async def _hold_lease(self) -> bool:
        now = trio.current_time()
        if self._renewed_at is not None and now - self._renewed_at < self._ttl / 3:
            return True
        if await self._store.acquire_lock(self._lease, self._holder, self._ttl):
            if self._renewed_at is None or now - self._renewed_at >= self._ttl:
                # Taken (again), or held with a lapse: another holder may have written the
                # state meanwhile.
                self._failures = None
            self._renewed_at = now
            return True
        self._renewed_at = None
        return False

    async def release(self) -> None:
        if self._renewed_at is not None:
            self._renewed_at = None
            await self._store.release_lock(self._lease, self._holder)

    async def post(self, events: Sequence[PendingEvent]) -> str | None:
        """Send one envelope; None when the endpoint took it, else why not (one line)."""
        body = envelope(events)
        headers = list(self._headers)
        if self.endpoint.secret is not None:
            headers.append((SIGNATURE_HEADER, signature(self.endpoint.secret, body)))
        try:
            # httpx bounds each phase by the timeout; this bounds the whole exchange.
            with trio.fail_after(self.endpoint.timeout * 2 + 1):
                async with self._client.stream(
                    "POST",
                    self.endpoint.url,
                    content=body,
                    headers=headers,
                    timeout=self.endpoint.timeout,
                ) as answer:
                    if 200 <= answer.status_code < 300:
                        # Read to its end, the connection goes back to the pool for the
                        # next delivery; left unread, it is closed and the next delivery
                        # connects again. A long body is not worth reading for that.
                        # The endpoint has taken the events whatever happens to the rest.
                        with contextlib.suppress(httpx.HTTPError):
                            received = 0
                            async for chunk in answer.aiter_raw():
                                received += len(chunk)
                                if received > MAX_DRAINED:
                                    break
                        return None
                    text = b""
                    async for chunk in answer.aiter_bytes():
                        text += chunk
                        if len(text) >= ERROR_BODY:
                            break
                    detail = text[:ERROR_BODY].decode("utf-8", "replace").strip()
                    detail = " ".join(detail.split())
                    return f"{self.endpoint.url} answered {answer.status_code}" + (
                        f": {detail}" if detail else ""
                    )
        except trio.TooSlowError:
            return f"{self.endpoint.url} did not answer within {self.endpoint.timeout * 2 + 1:g} s"
        except httpx.TimeoutException:
            return f"{self.endpoint.url} did not answer within {self.endpoint.timeout:g} s"
        except httpx.HTTPError as exc:
            return f"{self.endpoint.url}: {type(exc).__name__}: {exc or 'failed'}"


async def _flush_pulls(store: MetadataStore) -> None:
    dropped = 0
    while True:
        await trio.sleep(PULL_FLUSH_SECONDS)
        try:
            await store.flush_pulls()
        except MetadataError as exc:
            log.warning("pull events lost: %s", exc)
        if store.pulls_dropped != dropped:
            log.warning("pull events dropped (too many waiting): %d", store.pulls_dropped - dropped)
            dropped = store.pulls_dropped


async def run_events(store: MetadataStore, config: Config) -> None:
    """Deliver every configured endpoint's events until cancelled (the server's shutdown)."""
    limits = httpx.Limits(max_connections=4 * max(1, len(config.event_endpoints)))
    async with httpx.AsyncClient(limits=limits, follow_redirects=False) as client:
        deliverers = [
            Deliverer(
                store,
                endpoint,
                client,
                batch=config.event_batch,
                poll_interval=config.event_poll_interval,
            )
            for endpoint in config.event_endpoints
        ]
        try:
            async with trio.open_nursery() as nursery:
                for deliverer in deliverers:
                    nursery.start_soon(deliverer.run)
                if store.event_routing.pulls:
                    nursery.start_soon(_flush_pulls, store)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                # Hand the endpoints to another replica at once rather than at expiry,
                # and write the pulls noted since the last flush.
                for deliverer in deliverers:
                    try:
                        await deliverer.release()
                    except MetadataError as exc:
                        log.warning(
                            "endpoint=%s lease not released: %s", deliverer.endpoint.name, exc
                        )
                if store.event_routing.pulls:
                    try:
                        await store.flush_pulls()
                    except MetadataError as exc:
                        log.warning("pull events lost: %s", exc)
