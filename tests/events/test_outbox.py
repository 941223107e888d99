"""The outbox below the HTTP API: an event exists exactly when its change does, endpoint
filters, pulls in batches, and the endpoint configuration as operators write it."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from regd.clock import ManualClock
from regd.config import EventEndpoint, load
from regd.errors import ConfigError
from regd.events import envelope, routing_for, signature
from regd.events.delivery import retry_delay
from regd.metadata import MetadataStore, MissingReferences, Origin, Target
from regd.metadata.outbox import EndpointFilter, EventRouting, render, timestamp
from tests.metadata.test_batching import manifest

BLOB = "sha256:" + "1" * 64
ORIGIN = Origin("7", "10.0.0.1", "reg.example:5000", "PUT", "ua/1", "alice", "https://reg.example")


def routing(*filters: EndpointFilter) -> EventRouting:
    return EventRouting(filters or (EndpointFilter("a"),), "node:5000", "instance")


async def test_an_event_is_written_with_its_change_and_only_then(store: MetadataStore) -> None:
    store.configure_events(routing())
    await store.link_blob("r", BLOB, 5, origin=ORIGIN)
    # A push the database refuses leaves no event behind.
    with pytest.raises(MissingReferences):
        await store.put_manifest(
            "r", manifest(2, [BLOB, "sha256:" + "9" * 64]), ["v1"], origin=ORIGIN
        )
    assert not await store.delete_tag("r", "nope", origin=ORIGIN)
    await store.put_manifest("r", manifest(3, [BLOB]), ["v1", "v2"], origin=ORIGIN)
    # Without an origin a change is not reported (imports, repairs).
    await store.link_blob("r", "sha256:" + "4" * 64, 1)
    pending = await store.pending_events("a", 10)
    events = [json.loads(p.body) for p in pending]
    assert [(e["action"], e["target"].get("tag")) for e in events] == [
        ("push", None),
        ("push", "v1"),
        ("push", "v2"),
    ]
    assert events[0] == {
        "id": events[0]["id"],
        "timestamp": events[0]["timestamp"],
        "action": "push",
        "target": {
            "repository": "r",
            "mediaType": "application/octet-stream",
            "digest": BLOB,
            "size": 5,
            "length": 5,
            "url": f"https://reg.example/v2/r/blobs/{BLOB}",
        },
        "request": {
            "id": "7",
            "addr": "10.0.0.1",
            "host": "reg.example:5000",
            "method": "PUT",
            "useragent": "ua/1",
        },
        "actor": {"name": "alice"},
        "source": {"addr": "node:5000", "instanceID": "instance"},
    }
    assert json.loads(envelope(pending)) == {"events": events}
    assert await store.unlink_blob("r", BLOB, origin=ORIGIN)
    last = json.loads((await store.pending_events("a", 10))[-1].body)
    assert (last["action"], last["target"]) == ("delete", {"repository": "r", "digest": BLOB})


async def test_endpoints_get_what_they_asked_for(store: MetadataStore) -> None:
    store.configure_events(
        routing(
            EndpointFilter("all"),
            EndpointFilter("team", repositories=re.compile("team/.*")),
            EndpointFilter("no-deletes", ignored_actions=frozenset({"delete"})),
            EndpointFilter("no-blobs", ignored_media_types=frozenset({"application/octet-stream"})),
        )
    )
    await store.link_blob("team/a", BLOB, 5, origin=ORIGIN)
    await store.link_blob("other", BLOB, 5, origin=ORIGIN)
    await store.delete_repository("other", origin=ORIGIN)
    states = {s.name: s.pending for s in await store.event_states()}
    assert states == {"all": 3, "team": 1, "no-deletes": 2, "no-blobs": 1}
    # Each endpoint's queue is its own: dropping from one, or delivering to one, leaves the
    # others as they were.
    first = (await store.pending_events("all", 1))[0].seq
    assert await store.drop_events("all", first) == 1
    team = await store.pending_events("team", 10)
    await store.events_delivered("team", [e.seq for e in team])
    states = {s.name: s.pending for s in await store.event_states()}
    assert states == {"all": 2, "team": 0, "no-deletes": 2, "no-blobs": 1}


async def test_failures_back_off_and_an_operator_can_cut_it_short(
    store: MetadataStore, clock: ManualClock
) -> None:
    store.configure_events(routing())
    await store.link_blob("r", BLOB, 5, origin=ORIGIN)
    assert await store.delivery_failed("a", "refused", clock.now() + 60) == 1
    assert await store.delivery_failed("a", "refused again", clock.now() + 120) == 2
    assert await store.endpoint_state("a") == (2, clock.now() + 120)
    assert await store.retry_events(None) == ["a"]
    assert await store.endpoint_state("a") == (0, 0.0)
    (state,) = await store.event_states()
    assert (state.pending, state.last_error) == (1, "refused again")
    endpoint = EventEndpoint("a", "http://x", threshold=3, backoff=2.0)
    assert [retry_delay(endpoint, n) for n in (1, 2, 3, 4, 5, 40)] == [
        0.1,
        0.1,
        2.0,
        4.0,
        8.0,
        300.0,
    ]


async def test_pulls_are_written_in_batches_when_asked_for(store: MetadataStore) -> None:
    store.configure_events(routing(EndpointFilter("quiet"), EndpointFilter("loud", pulls=True)))
    for _ in range(3):
        store.note_pull(Target("r", BLOB, "application/octet-stream", 5, kind="blobs"), ORIGIN)
    assert await store.pending_events("loud", 10) == []
    assert await store.flush_pulls() == 3
    assert [json.loads(p.body)["action"] for p in await store.pending_events("loud", 10)] == [
        "pull"
    ] * 3
    assert await store.pending_events("quiet", 10) == []


def test_endpoints_as_distribution_and_regd_spell_them(tmp_path: Path) -> None:
    file = tmp_path / "regd.toml"
    file.write_text(
        """
[events]
pulls = true
batch = 10

[[notifications.endpoints]]
name = "dist"
url = "https://hooks.example/dist"
headers = { Authorization = ["Bearer x", "Bearer y"] }
timeout = "500ms"
threshold = 5
backoff = "2s"
ignoredmediatypes = ["application/octet-stream"]
ignore = { mediatypes = ["text/plain"], actions = ["pull"] }

[[notifications.endpoints]]
name = "off"
url = "https://hooks.example/off"
disabled = true

[[events.endpoint]]
name = "ours"
url = "http://hooks.example/ours"
repositories = "team/.*"
secret = "0123456789abcdef"
pulls = false
fills = true
"""
    )
    config = load(file=file, env={})
    dist, ours = config.event_endpoints
    assert dist == EventEndpoint(
        "dist",
        "https://hooks.example/dist",
        headers=(("Authorization", "Bearer x"), ("Authorization", "Bearer y")),
        timeout=0.5,
        threshold=5,
        backoff=2.0,
        ignored_media_types=("application/octet-stream", "text/plain"),
        ignored_actions=("pull",),
    )
    assert (ours.repositories, ours.secret, ours.pulls) == ("team/.*", "0123456789abcdef", False)
    assert (config.event_pulls, config.event_batch) == (True, 10)
    # Workers receive it through the environment.
    assert load(env=config.to_env()) == config
    filters = routing_for(config).endpoints
    assert [f.pulls for f in filters] == [True, False]
    assert not filters[0].wants("pull", "a", None)
    # Fills are off unless asked for, and obey the repository filter like the rest.
    assert [f.fills for f in filters] == [False, True]
    assert not filters[0].wants("fill", "team/a", None)
    assert filters[1].wants("fill", "team/a", None)
    assert not filters[1].wants("fill", "other/a", None)
    # RFC 4231, test case 2.
    assert signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[events.endpoint]]\nurl = "http://x"', "name"),
        ('[[events.endpoint]]\nname = "a"\nurl = "ftp://x"', "url"),
        ('[[events.endpoint]]\nname = "a"\nurl = "http://x"\nsecret = "short"', "secret"),
        ('[[events.endpoint]]\nname = "a"\nurl = "http://x"\nrepositories = "("', "regular"),
        ('[[events.endpoint]]\nname = "a"\nurl = "http://x"\nignore = { actions = ["x"] }', "x"),
        ('[[events.endpoint]]\nname = "a"\nurl = "http://x"\ncolour = 1', "colour"),
        ('[[events.endpoint]]\nname = "a"\nurl = "http://x"\ntimeout = "-1s"', "timeout"),
        (
            '[[events.endpoint]]\nname = "a"\nurl = "http://x"\n'
            '[[events.endpoint]]\nname = "a"\nurl = "http://y"',
            "two",
        ),
        ("[events]\nfrequency = 1", "events.frequency"),
        ("[notifications]\nevents = {}", "notifications"),
        ("event_batch = 0", "event_batch"),
    ],
)
def test_bad_endpoints_are_refused_in_one_line(tmp_path: Path, toml: str, message: str) -> None:
    file = tmp_path / "regd.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load(file=file, env={})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_sequence_numbers_are_never_handed_out_again(store: MetadataStore) -> None:
    store.configure_events(routing())
    await store.link_blob("r", BLOB, 5, origin=ORIGIN)
    (old,) = await store.pending_events("a", 10)
    assert await store.drop_events("a", None) == 1
    await store.link_blob("r", BLOB, 5, origin=ORIGIN)
    (new,) = await store.pending_events("a", 10)
    # A late acknowledgement of the dropped event must not take the new one with it.
    assert new.seq > old.seq
    await store.events_delivered("a", [old.seq])
    assert await store.pending_events("a", 10) == [new]


def _rendered_by_json(
    event_id: str, when: float, action: str, target: Target, origin: Origin, routing: EventRouting
) -> str:
    """The envelope's event as dictionaries handed to json.dumps: what render must write."""
    body: dict[str, object] = {"repository": target.repository}
    if target.media_type is not None:
        body["mediaType"] = target.media_type
    if target.digest is not None:
        body["digest"] = target.digest
    if target.size is not None:
        body["size"] = body["length"] = target.size
    if target.from_repository:
        body["fromRepository"] = target.from_repository
    if target.kind is not None and target.digest is not None and origin.base_url:
        body["url"] = f"{origin.base_url}/v2/{target.repository}/{target.kind}/{target.digest}"
    if target.tag is not None:
        body["tag"] = target.tag
    request = {"id": origin.request_id}
    if origin.addr:
        request["addr"] = origin.addr
    if origin.host:
        request["host"] = origin.host
    request |= {"method": origin.method, "useragent": origin.useragent}
    source = {"addr": routing.source_addr} if routing.source_addr else {}
    source["instanceID"] = routing.instance_id
    event = {
        "id": event_id,
        "timestamp": timestamp(when),
        "action": action,
        "target": body,
        "request": request,
        "actor": {"name": origin.actor} if origin.actor else {},
        "source": source,
    }
    return json.dumps(event, separators=(",", ":"))


ODD = 'q"uo\\te \u00e9\u4e2d\U0001f600 \x01\n\t/'


@pytest.mark.parametrize(
    "target",
    [
        Target("r", BLOB, "application/octet-stream", 5, kind="blobs"),
        Target("t/app", BLOB, "application/vnd.oci.image.manifest.v1+json", 0, "v1", "manifests"),
        Target("r", BLOB, kind="blobs", from_repository="other/r"),
        Target("r"),
        Target("r", tag="gone"),
        Target(ODD, ODD, ODD, 2**40, ODD, ODD, ODD),
    ],
)
@pytest.mark.parametrize(
    "origin",
    [
        ORIGIN,
        Origin(),
        Origin("id", method="GET", useragent="wrk"),
        Origin(ODD, ODD, ODD, ODD, ODD, ODD, ODD),
    ],
)
@pytest.mark.parametrize("source_addr", ["node:5000", "", ODD])
def test_an_event_is_rendered_as_json_dumps_writes_it(
    target: Target, origin: Origin, source_addr: str
) -> None:
    routing = EventRouting((EndpointFilter("a"),), source_addr, "instance-" + ODD)
    for action in ("push", "pull", "delete", "mount"):
        expected = _rendered_by_json("e-" + ODD, 1.5e9 + 0.25, action, target, origin, routing)
        assert render("e-" + ODD, 1.5e9 + 0.25, action, target, origin, routing) == expected


async def test_every_pull_in_a_flush_has_an_id_of_its_own(store: MetadataStore) -> None:
    store.configure_events(routing(EndpointFilter("loud", pulls=True)))
    for _ in range(50):
        store.note_pull(Target("r", BLOB, "application/octet-stream", 5, kind="blobs"), ORIGIN)
    assert await store.flush_pulls() == 50
    ids = [json.loads(p.body)["id"] for p in await store.pending_events("loud", 100)]
    assert len(set(ids)) == 50
    for text in ids:
        # What receivers written for Distribution (a Go uuid.NewV4) get.
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
