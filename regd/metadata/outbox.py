"""The event outbox: what changed, written in the transaction that changed it.

A push, a mount or a deletion writes one row per endpoint that wants its event (rendered
once, in Distribution's notification format) in the same transaction as the change, so an
event exists exactly when its change does. Deliverers (regd.events) read an endpoint's
rows in order and delete them once the endpoint has taken them.

A row per endpoint rather than one per event and a cursor per endpoint: on PostgreSQL,
sequence numbers are handed out when rows are inserted, not when they commit, so a cursor
could move past an event whose transaction commits late and never see it; a row is seen
whenever it commits. And a push with one endpoint adds one INSERT to its transaction, not
two; the body is repeated for a second endpoint, which is rarer and cheap.

Pulls change nothing and are not written in a transaction of their own per request: they
are noted in memory and written in batches (`flush_pulls`), so an event for a pull may be
lost in a crash.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

import trio
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    select,
    update,
)

from regd.metadata.engine import Database, DriverStatement
from regd.metadata.schema import metadata

# Distribution's names for what happened.
PUSH, PULL, MOUNT, DELETE = "push", "pull", "mount", "delete"
# regd's own: a mirror stored content fetched from its upstream. A name Distribution never
# sends, so receivers written for it (which switch on the action) pass over it.
FILL = "fill"
# What Distribution calls a blob's media type in its events.
BLOB_MEDIA_TYPE = "application/octet-stream"
# Pulls noted and not yet written; past this, further pulls are dropped (and counted)
# until the next flush, rather than growing the process without bound.
MAX_PENDING_PULLS = 10_000

_Id = BigInteger().with_variant(Integer(), "sqlite")

# What each endpoint has still to receive, oldest first by `seq`; `body` is the event as
# Distribution's receivers read it, rendered when it happened.
event_queue = Table(
    "event_queue",
    metadata,
    Column("seq", _Id, primary_key=True, autoincrement=True),
    Column("endpoint", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("body", Text, nullable=False),
    Index("event_queue_endpoint", "endpoint", "seq"),
    # Never hand out a number again, even once the queue has emptied: a delivery's
    # acknowledgement names its rows by number, and must not take a newer event's.
    sqlite_autoincrement=True,
)

# Each endpoint's delivery state, shared by every replica, so that a backoff outlives a
# restart and `regctl events` sees the same on any replica.
event_endpoints = Table(
    "event_endpoints",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_error", Text),
    Column("last_error_at", Float),
    Column("last_delivered_at", Float),
    Column("delivered", BigInteger, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class Origin:
    """The request behind a change and who made it, as events report them.

    `base_url` (scheme and host the client used) prefixes the target's URL."""

    request_id: str = ""
    addr: str = ""
    host: str = ""
    method: str = ""
    useragent: str = ""
    actor: str = ""
    base_url: str = ""


@dataclass(frozen=True, slots=True)
class EndpointFilter:
    """Which events an endpoint wants; `repositories` is matched against whole names."""

    name: str
    ignored_actions: frozenset[str] = frozenset()
    ignored_media_types: frozenset[str] = frozenset()
    repositories: re.Pattern[str] | None = None
    pulls: bool = False
    fills: bool = False

    def wants(self, action: str, repository: str, media_type: str | None) -> bool:
        if action in self.ignored_actions or (action == PULL and not self.pulls):
            return False
        if action == FILL and not self.fills:
            return False
        if media_type is not None and media_type in self.ignored_media_types:
            return False
        return self.repositories is None or self.repositories.fullmatch(repository) is not None


@dataclass(frozen=True, slots=True)
class EventRouting:
    endpoints: tuple[EndpointFilter, ...] = ()
    # Distribution's source record: this node's address and this process's id.
    source_addr: str = ""
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Whether any endpoint hears of pulls, of fills: asked on every GET, so decided here,
    # once, rather than by going through the endpoints each time.
    pulls: bool = field(init=False)
    fills: bool = field(init=False)
    # Distribution's `source` object as every event of this process carries it, rendered.
    source_json: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pulls = any(e.pulls and PULL not in e.ignored_actions for e in self.endpoints)
        fills = any(e.fills and FILL not in e.ignored_actions for e in self.endpoints)
        source: dict[str, str] = {}
        if self.source_addr:
            source["addr"] = self.source_addr
        source["instanceID"] = self.instance_id
        object.__setattr__(self, "pulls", pulls)
        object.__setattr__(self, "fills", fills)
        object.__setattr__(self, "source_json", json.dumps(source, separators=(",", ":")))

    def wanting(self, action: str, repository: str, media_type: str | None) -> list[str]:
        return [e.name for e in self.endpoints if e.wants(action, repository, media_type)]


@dataclass(frozen=True, slots=True)
class Target:
    """What an event is about. `kind` ("manifests" or "blobs") builds the target's URL."""

    repository: str
    digest: str | None = None
    media_type: str | None = None
    size: int | None = None
    tag: str | None = None
    kind: str | None = None
    from_repository: str | None = None


@dataclass(frozen=True, slots=True)
class PendingEvent:
    seq: int
    body: str


@dataclass(frozen=True, slots=True)
class EndpointState:
    name: str
    pending: int
    oldest_seq: int | None
    oldest_at: float | None
    failures: int
    last_error: str | None
    last_error_at: float | None
    last_delivered_at: float | None
    delivered: int
    next_attempt_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pending": self.pending,
            "oldest_seq": self.oldest_seq,
            "oldest_at": self.oldest_at,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_delivered_at": self.last_delivered_at,
            "delivered": self.delivered,
            "next_attempt_at": self.next_attempt_at,
        }


def timestamp(when: float) -> str:
    """RFC 3339 in UTC, as Go renders a time.Time in JSON."""
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


def event_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs as text, as `str(uuid.uuid4())` writes them, from
    one read of the system's randomness: a read for each, as uuid4 does, took longer than
    rendering the event itself, and a flush renders thousands of pulls."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # the version, 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # the variant, RFC 4122
    h = raw.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-"
        f"{h[i + 16 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def render(
    event_id: str, when: float, action: str, target: Target, origin: Origin, routing: EventRouting
) -> str:
    """One event in Distribution's envelope format; empty fields are left out as it does,
    except the request's id, method and user agent, which it always writes.

    Written out piece by piece: the same text `json.dumps` gives for the nested objects
    with compact separators (the strings quoted by its own encoder), at a fraction of the
    cost of building the dictionaries and walking them. Every pull is one of these."""
    out = [
        '{"id":',
        _quote(event_id),
        ',"timestamp":',
        _quote(timestamp(when)),
        ',"action":',
        _quote(action),
        ',"target":{"repository":',
        _quote(target.repository),
    ]
    if target.media_type is not None:
        out += (',"mediaType":', _quote(target.media_type))
    if target.digest is not None:
        out += (',"digest":', _quote(target.digest))
    if target.size is not None:
        size = int.__repr__(target.size)
        out += (',"size":', size, ',"length":', size)
    if target.from_repository:
        out += (',"fromRepository":', _quote(target.from_repository))
    if target.kind is not None and target.digest is not None and origin.base_url:
        url = f"{origin.base_url}/v2/{target.repository}/{target.kind}/{target.digest}"
        out += (',"url":', _quote(url))
    if target.tag is not None:
        out += (',"tag":', _quote(target.tag))
    out += ('},"request":{"id":', _quote(origin.request_id))
    if origin.addr:
        out += (',"addr":', _quote(origin.addr))
    if origin.host:
        out += (',"host":', _quote(origin.host))
    out += (
        ',"method":',
        _quote(origin.method),
        ',"useragent":',
        _quote(origin.useragent),
        '},"actor":',
        '{"name":' + _quote(origin.actor) + "}" if origin.actor else "{}",
        ',"source":',
        routing.source_json,
        "}",
    )
    return "".join(out)


class _OutboxStatements:
    def __init__(self, engine: Engine) -> None:
        queue, ep = event_queue, event_endpoints
        # Each runs once per event (or per delivery of many), so on the driver's cursor.
        # :endpoint, :created_at, :body
        self.add = DriverStatement(
            queue.insert().values(
                endpoint=bindparam("endpoint"),
                created_at=bindparam("created_at"),
                body=bindparam("body"),
            ),
            engine,
        )
        # :endpoint, :limit
        self.pending = DriverStatement(
            select(queue.c.seq, queue.c.body)
            .where(queue.c.endpoint == bindparam("endpoint"))
            .order_by(queue.c.seq)
            .limit(bindparam("limit")),
            engine,
        )
        # :endpoint, :seq; run for each delivered event, so that its text is the same
        # whatever the delivery's size.
        self.ack = DriverStatement(
            delete(queue).where(
                queue.c.endpoint == bindparam("endpoint"), queue.c.seq == bindparam("seq")
            ),
            engine,
        )
        self.state = select(ep).where(ep.c.name == bindparam("endpoint"))


class Outbox(Database):
    def _prepare(self) -> None:
        super()._prepare()
        self._outbox_sql = _OutboxStatements(self.engine)
        self.event_routing = EventRouting()
        self._pulls: list[tuple[float, Target, Origin]] = []
        self.pulls_dropped = 0

    def configure_events(self, routing: EventRouting) -> None:
        """Which endpoints events are written for; none (the default): no events at all."""
        self.event_routing = routing

    # -- written with the change ---------------------------------------------------------

    def _record_events(
        self, conn: Connection, origin: Origin | None, action: str, targets: Sequence[Target]
    ) -> None:
        """Write the events for `targets`, in the caller's transaction, for the endpoints
        that want them. No origin: the change is not one events report."""
        self._write_events(conn, self._event_rows(origin, action, targets))

    def _event_rows(
        self,
        origin: Origin | None,
        action: str,
        targets: Sequence[Target],
        when: float | None = None,
        ids: Iterator[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The rows reporting `targets`, rendered; the busy write paths make them before
        their transaction, which then holds the database's write lock no longer for them.
        `ids`: event ids to take from (one for each target at most), else made here."""
        routing = self.event_routing
        if origin is None or not routing.endpoints:
            return []
        now = self.clock.now() if when is None else when
        if ids is None:
            ids = iter(event_ids(len(targets)))
        rows = []
        for target in targets:
            names = routing.wanting(action, target.repository, target.media_type)
            if names:
                body = render(next(ids), now, action, target, origin, routing)
                rows += [{"endpoint": n, "created_at": now, "body": body} for n in names]
        return rows

    def _write_events(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        self._outbox_sql.add.many(conn, rows)

    # -- pulls, best effort --------------------------------------------------------------

    def note_pull(self, target: Target, origin: Origin) -> None:
        """Remember a pull for the next `flush_pulls`; cheap, and never waits."""
        if not self.event_routing.pulls:
            return
        if len(self._pulls) >= MAX_PENDING_PULLS:
            self.pulls_dropped += 1
            return
        self._pulls.append((self.clock.now(), target, origin))

    async def flush_pulls(self) -> int:
        """Write the pulls noted so far, in one transaction; how many were noted."""
        noted, self._pulls = self._pulls, []
        if not noted:
            return 0

        def render_all() -> list[dict[str, Any]]:
            ids = iter(event_ids(len(noted)))
            return [
                r
                for when, target, origin in noted
                for r in self._event_rows(origin, PULL, [target], when, ids)
            ]

        # Thousands of pulls a second render for tens of milliseconds: not on the loop.
        rows = await trio.to_thread.run_sync(render_all, limiter=self._limiter)
        await self.run_write(self._write_events, rows)
        return len(noted)

    # -- delivery ------------------------------------------------------------------------

    async def pending_events(self, endpoint: str, limit: int) -> list[PendingEvent]:
        """The endpoint's next undelivered events, oldest first."""

        def q(conn: Connection) -> list[PendingEvent]:
            rows = self._outbox_sql.pending.rows(conn, {"endpoint": endpoint, "limit": limit})
            return [PendingEvent(int(seq), body) for seq, body in rows]

        # One statement: on SQLite read on the loop's thread, cheaper than a hand-off.
        return await self.run_query(q)

    async def events_delivered(self, endpoint: str, seqs: Sequence[int]) -> None:
        """The endpoint took these events: they leave its queue."""
        batch = list(seqs)

        def w(conn: Connection) -> None:
            self._outbox_sql.ack.many(conn, [{"endpoint": endpoint, "seq": seq} for seq in batch])
            now = self.clock.now()
            self._upsert_state(
                conn,
                endpoint,
                {
                    "failures": 0,
                    "last_delivered_at": now,
                    "delivered": event_endpoints.c.delivered + len(batch),
                    "next_attempt_at": 0.0,
                },
            )

        await self.run_write(w)

    async def delivery_failed(self, endpoint: str, error: str, next_attempt_at: float) -> int:
        """Note a failed attempt; the endpoint's consecutive failures so far."""

        def w(conn: Connection) -> int:
            self._upsert_state(
                conn,
                endpoint,
                {
                    "failures": event_endpoints.c.failures + 1,
                    "last_error": error[:1000],
                    "last_error_at": self.clock.now(),
                    "next_attempt_at": next_attempt_at,
                },
            )
            failures = conn.execute(
                select(event_endpoints.c.failures).where(event_endpoints.c.name == endpoint)
            ).scalar_one()
            return int(failures)

        return await self.run_write(w)

    async def endpoint_state(self, endpoint: str) -> tuple[int, float]:
        """(consecutive failures, when the next attempt is due) for an endpoint."""

        def q(conn: Connection) -> tuple[int, float]:
            row = conn.execute(self._outbox_sql.state, {"endpoint": endpoint}).first()
            if row is None:
                return 0, 0.0
            return int(row.failures), float(row.next_attempt_at)

        return await self.run_read(q)

    def _upsert_state(self, conn: Connection, endpoint: str, values: dict[str, Any]) -> None:
        ep = event_endpoints
        changed = conn.execute(update(ep).where(ep.c.name == endpoint).values(**values)).rowcount
        if changed:
            return
        conn.execute(
            self.insert(ep).on_conflict_do_nothing(index_elements=["name"]),
            {
                "name": endpoint,
                "failures": 0,
                "delivered": 0,
                "next_attempt_at": 0.0,
            },
        )
        conn.execute(update(ep).where(ep.c.name == endpoint).values(**values))

    # -- operators -----------------------------------------------------------------------

    async def event_states(self) -> list[EndpointState]:
        """Every endpoint with a state or with events waiting, by name."""

        def q(conn: Connection) -> list[EndpointState]:
            queue, ep = event_queue, event_endpoints
            queued = {
                name: (int(count), first, oldest)
                for name, count, first, oldest in conn.execute(
                    select(
                        queue.c.endpoint,
                        func.count(),
                        func.min(queue.c.seq),
                        func.min(queue.c.created_at),
                    ).group_by(queue.c.endpoint)
                )
            }
            states = {row.name: row for row in conn.execute(select(ep))}
            out = []
            for name in sorted(set(queued) | set(states)):
                count, first, oldest_at = queued.get(name, (0, None, None))
                row = states.get(name)
                out.append(
                    EndpointState(
                        name=name,
                        pending=count,
                        oldest_seq=None if first is None else int(first),
                        oldest_at=oldest_at,
                        failures=int(row.failures) if row else 0,
                        last_error=row.last_error if row else None,
                        last_error_at=row.last_error_at if row else None,
                        last_delivered_at=row.last_delivered_at if row else None,
                        delivered=int(row.delivered) if row else 0,
                        next_attempt_at=float(row.next_attempt_at) if row else 0.0,
                    )
                )
            return out

        return await self.run_read(q)

    async def retry_events(self, endpoint: str | None) -> list[str]:
        """Make failing endpoints (or one) try again now; the endpoints reset."""

        def w(conn: Connection) -> list[str]:
            ep = event_endpoints
            cond = [ep.c.failures > 0]
            if endpoint is not None:
                cond = [ep.c.name == endpoint]
            names = list(conn.execute(select(ep.c.name).where(*cond)).scalars())
            if names:
                conn.execute(
                    update(ep).where(ep.c.name.in_(names)).values(failures=0, next_attempt_at=0.0)
                )
            return names

        return await self.run_write(w)

    async def drop_events(self, endpoint: str, through: int | None) -> int:
        """Give up on an endpoint's undelivered events (up to sequence `through`, or all);
        how many were dropped."""

        def w(conn: Connection) -> int:
            queue = event_queue
            cond = [queue.c.endpoint == endpoint]
            if through is not None:
                cond.append(queue.c.seq <= through)
            dropped: int = conn.execute(delete(queue).where(*cond)).rowcount
            return dropped

        return await self.run_write(w)
