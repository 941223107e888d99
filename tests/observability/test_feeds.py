"""regd feeds its series past prometheus_client's inc and observe: what a scrape then
reads must be what those would have written (every bucket, sum and count), in
prometheus_client's multiprocess files, read back by its own parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from regd.observability.metrics import LATENCY_BUCKETS

# Each on a bound, between bounds, below the first and past the last.
LATENCIES = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.5, 59.0, 61.0, 3600.0]

FEED = """
import json, sys
from pathlib import Path
from regd.observability.metrics import Metrics
m = Metrics(Path(sys.argv[1]))
for seconds in json.loads(sys.argv[2]):
    m.request("manifest", "GET", 200, seconds, 0, 10)
    m.request("blob_upload", "PATCH", 202, seconds, 7, 0)
    m.database_operation(m.request, seconds)
sys.stdout.buffer.write(m.exposition())
"""


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_what_regd_feeds_is_what_a_scrape_reads(tmp_path: Path) -> None:
    # A process of its own: prometheus_client picks its files once a process.
    out = subprocess.run(
        [sys.executable, "-c", FEED, str(tmp_path), json.dumps(LATENCIES)],
        env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    samples = _samples(out)
    n = len(LATENCIES)
    for route, method in (("manifest", "GET"), ("blob_upload", "PATCH")):
        labels = {"route": route, "method": method}
        for bound in [*LATENCY_BUCKETS, float("inf")]:
            le = "+Inf" if bound == float("inf") else repr(bound)
            key = (
                "regd_http_request_duration_seconds_bucket",
                frozenset({**labels, "le": le}.items()),
            )
            assert samples[key] == sum(1 for s in LATENCIES if s <= bound), (route, le)
        count = ("regd_http_request_duration_seconds_count", frozenset(labels.items()))
        assert samples[count] == n
        total = ("regd_http_request_duration_seconds_sum", frozenset(labels.items()))
        assert abs(samples[total] - sum(LATENCIES)) < 1e-9
    requests = "regd_http_requests_total"
    assert (
        samples[
            (requests, frozenset({"route": "manifest", "method": "GET", "status": "200"}.items()))
        ]
        == n
    )
    assert (
        samples[("regd_http_sent_bytes_total", frozenset({"route": "manifest"}.items()))] == 10 * n
    )
    assert (
        samples[("regd_http_received_bytes_total", frozenset({"route": "blob_upload"}.items()))]
        == 7 * n
    )
    assert (
        samples[("regd_http_received_bytes_total", frozenset({"route": "manifest"}.items()))] == 0
    )
    database = {"operation": "Metrics.request"}
    assert (
        samples[("regd_database_operation_duration_seconds_count", frozenset(database.items()))]
        == n
    )
    first = (
        "regd_database_operation_duration_seconds_bucket",
        frozenset({**database, "le": "0.0005"}.items()),
    )
    assert samples[first] == 2
