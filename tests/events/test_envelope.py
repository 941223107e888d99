"""regd's events against Distribution's: the same push, reported to the same receiver by
regd and by the reference registry (Distribution 2.8), carries the same fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.events.receiver import Receiver
from tests.helpers.http_api import ApiClient
from tests.helpers.reference import require_distribution
from tests.helpers.servers import DistributionServer, RegdFactory, ServerStartError


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def shape(value: Any) -> Any:
    """The keys of a JSON document, nested; leaves become their type's name."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return type(value).__name__


def test_the_envelope_is_distributions(
    regd_factory: RegdFactory, receiver: Receiver, tmp_path: Path
) -> None:
    require_distribution()
    config = tmp_path / "regd.toml"
    config.write_text(
        "[events]\npoll_interval = 0.1\n"
        f'[[events.endpoint]]\nname = "r"\nurl = "{receiver.url}/regd"\n'
    )
    regd = regd_factory(extra_args=["--config", str(config)])
    reference = DistributionServer(
        root=tmp_path / "root",
        scratch=tmp_path / "distribution",
        extra_config=(
            "notifications:\n  endpoints:\n    - name: r\n"
            f"      url: {receiver.url}/distribution\n      timeout: 1s\n"
            "      threshold: 3\n      backoff: 1s\n"
        ),
    )
    try:
        reference.start()
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        pushed = {}
        for server in (regd, reference):
            with ApiClient(server.url) as api:
                pushed[server.url] = api.push_tiny_image("ev/app", "v1", payload=b"same")
        assert pushed[regd.url] == pushed[reference.url]
        receiver.wait_for(3, "/regd")
        receiver.wait_for(3, "/distribution")
    finally:
        reference.stop()

    ours = {e["target"]["digest"]: e for e in receiver.events("/regd")}
    print(json.dumps([receiver.events("/regd")[-1], receiver.events("/distribution")], indent=1))
    theirs = {
        e["target"]["digest"]: e for e in receiver.events("/distribution") if e["action"] == "push"
    }
    assert sorted(ours) == sorted(theirs)
    for digest, event in ours.items():
        expected = theirs[digest]
        assert shape(event) == shape(expected), json.dumps([event, expected], indent=1)
        mine, other = event["target"], expected["target"]
        assert mine["url"].replace(regd.host, "HOST") == other["url"].replace(
            reference.host, "HOST"
        )
        del mine["url"], other["url"]
        assert mine == other
        assert event["action"] == expected["action"]
        assert event["request"]["method"] == expected["request"]["method"]
        assert event["request"]["useragent"] == expected["request"]["useragent"]
    delivered = [d for d in receiver.deliveries if d.path == "/regd"]
    theirs_headers = [d for d in receiver.deliveries if d.path == "/distribution"]
    assert delivered[0].headers["content-type"] == theirs_headers[0].headers["content-type"]
