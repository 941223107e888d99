"""The observability settings are checked at start-up, and requests are counted under a
small fixed set of route names."""

from __future__ import annotations

import pytest

from regd import config as cfg
from regd.errors import ConfigError
from regd.observability.metrics import route_of


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REGD_LOG_FORMAT": "xml"}, "log_format must be one of text, json"),
        ({"REGD_METRICS_ADDR": "127.0.0.1:5000"}, "needs a port of its own"),
        ({"REGD_METRICS_ADDR": "127.0.0.1:0"}, "needs a port of its own"),
        ({"REGD_METRICS_ADDR": "nowhere"}, "metrics_addr must be HOST:PORT"),
        ({"REGD_METRICS_ADDR": ":9102", "REGD_METRICS": "false"}, "needs metrics = true"),
        ({"REGD_READY_TIMEOUT": "0"}, "ready_timeout must be more than 0"),
    ],
)
def test_bad_settings_stop_regd_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg.load(env={"REGD_ADDR": "127.0.0.1:5000", **env})


def test_settings_from_the_environment() -> None:
    config = cfg.load(
        env={"REGD_METRICS_ADDR": ":9102", "REGD_LOG_FORMAT": "json", "REGD_READY_TIMEOUT": "5s"}
    )
    assert (config.metrics_bind, config.metrics_port) == ("0.0.0.0:9102", 9102)
    assert (config.log_format, config.ready_timeout, config.metrics) == ("json", 5.0, True)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v2/", "base"),
        ("/v2/_catalog", "catalog"),
        ("/v2/a/b/manifests/latest", "manifest"),
        ("/v2/a/blobs/sha256:00", "blob"),
        ("/v2/a/blobs/uploads/", "blob_upload"),
        ("/v2/a/blobs/uploads/0f3e", "blob_upload"),
        ("/v2/blobs/blobs/uploads/x", "blob_upload"),
        ("/v2/a/tags/list", "tags"),
        ("/v2/a/referrers/sha256:00", "referrers"),
        ("/admin/v1/gc", "admin"),
        ("/auth/token", "token"),
        ("/metrics", "metrics"),
        ("/readyz", "health"),
        ("/v2/a/unknown/thing", "other"),
        ("/favicon.ico", "other"),
    ],
)
def test_route_names(path: str, route: str) -> None:
    assert route_of(path) == route
