"""Reading regd's /metrics the way Prometheus does, and its JSON log lines."""

from __future__ import annotations

import json
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.servers import RegdServer
from tests.server.test_tls import wait_for

__all__ = ["json_lines", "scrape", "total", "value", "wait_for"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str, headers: dict[str, str] | None = None) -> Samples:
    """One scrape on a connection of its own (with several workers, any may answer)."""
    answer = httpx.get(
        f"{base_url}/metrics", headers={"connection": "close", **(headers or {})}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def json_lines(server: RegdServer) -> list[dict[str, Any]]:
    """Every line the server logged, each of which must be one JSON object."""
    return [json.loads(line) for line in server.output().splitlines() if line.strip()]
