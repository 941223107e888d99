"""The application: the data plane's router and Quart-Trio's control plane, one front door."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from quart import Response, request
from quart_trio import QuartTrio

from regd import api, ui
from regd.api.auth import Gate, canonical
from regd.api.auth import install as install_auth
from regd.api.errors import Answer, answer_for, refusal
from regd.api.exchange import (
    API_VERSION,
    EXCHANGE_KEY,
    REQUEST_ID_HEADER,
    Exchange,
    drain_body,
    framing_problem,
    log_access,
    may_carry_body,
)
from regd.auth.wiring import build_authenticator
from regd.config import Config
from regd.errors import Conflict
from regd.events import routing_for, run_events
from regd.observability import metrics as obs
from regd.registry import Policy, Registry, RetentionPolicy
from regd.tls import client_cn

# What a separate metrics listener (metrics_addr) answers; the main one then does not
# answer /metrics.
METRICS_LISTENER_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})

# Only the admin API takes request bodies through Quart (blobs and manifests arrive on the
# data plane), and its documents are small: Quart refuses longer bodies with 413.
CONTROL_BODY_LIMIT = 1024 * 1024

log = logging.getLogger("regd.housekeeping")


class RegdApp(QuartTrio):
    """Quart's control plane, behind the data plane's router and the shared plumbing.

    Every HTTP request passes through `__call__`: its `Exchange` is made there, the
    authentication gate (regd.api.auth) decides there who is asking and whether they may,
    and the common headers and the access log line are applied there for both dispatchers.
    """

    registry: Registry
    direct: api.Router
    access_logging: bool = True
    # None when authentication is off (regd.auth.wiring).
    gate: Gate | None = None
    # None when metrics are off.
    metrics: obs.Metrics | None = None
    # The port of the separate metrics listener, if there is one.
    metrics_port: int | None = None
    # Set when graceful shutdown begins (regd.server): /readyz answers 503 from then on.
    draining: trio.Event

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if scope["path"].startswith("//"):
            # The router ignores extra leading slashes (`//v2/a/tags/list` reaches the tags
            # listing); the gate and the direct dispatcher must see the path it routes, or
            # a spelling of it would pass the gate as a path that needs less.
            scope["path"] = "/" + scope["path"].lstrip("/")
        x = Exchange(scope, self.registry)
        x.user = client_cn(scope)
        send = _stamping(x, send)
        metrics = self.metrics
        if metrics is None:
            await self._dispatch(x, scope, receive, send)
        else:
            route = obs.route_of(x.path)
            upload = False
            if may_carry_body(scope["headers"]):
                receive = _counting(x, receive)
                upload = route == "blob_upload"
            if upload:
                metrics.uploads.inc()
            try:
                await self._dispatch(x, scope, receive, send)
            finally:
                if upload:
                    metrics.uploads.dec()
                metrics.request(
                    route, x.method, x.status, time.perf_counter() - x.started, x.received, x.sent
                )
        if self.access_logging:
            log_access(x)

    async def _dispatch(
        self, x: Exchange, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        problem = framing_problem(scope["headers"])
        if problem is not None:
            status, headers, body = refusal(400, problem)
            # The body's end is unknowable, so the connection cannot carry another request.
            headers["connection"] = "close"
            await self._answer(x, send, (status, headers, body))
        elif self._misdirected(scope, x.path):
            if may_carry_body(scope["headers"]):
                await drain_body(receive)
            await self._answer(x, send, refusal(404, f"{x.path} is not served on this address"))
        elif (
            (self.gate is None or await self._admitted(x, scope, receive, send))
            and await self._writable(x, scope, receive, send)
            and not await self.direct.handle(x, scope, receive, send)
        ):
            # Quart's handlers find it in their request's scope (regd.api.http.exchange).
            cast(dict[str, Any], scope)[EXCHANGE_KEY] = x
            await super().__call__(scope, receive, _answering(x, send))

    def _misdirected(self, scope: HTTPScope, path: str) -> bool:
        """Whether a request reached the listener that does not serve its path: with a
        metrics_addr, that one answers only metrics and health, the main one no metrics."""
        if self.metrics_port is None:
            return False
        server = scope.get("server")
        if server is not None and server[1] == self.metrics_port:
            return path not in METRICS_LISTENER_PATHS
        return canonical(path) == "/metrics"

    async def _admitted(
        self, x: Exchange, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> bool:
        """Whether the gate lets the request through; if not, it has been answered."""
        assert self.gate is not None
        try:
            await self.gate.admit_exchange(x, scope, x.user)
        except Exception as error:
            await self._refuse(x, scope, receive, send, error)
            return False
        return True

    async def _writable(
        self, x: Exchange, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> bool:
        """False, the request answered, for a write to the registry API in maintenance
        mode (every method but GET and HEAD under /v2/, as Distribution's read-only mode)."""
        if x.method in ("GET", "HEAD") or not x.path.startswith("/v2/"):
            return True
        try:
            await self.registry.maintenance.check_writable()
        except Exception as error:
            await self._refuse(x, scope, receive, send, error)
            return False
        return True

    async def _refuse(
        self,
        x: Exchange,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        error: Exception,
    ) -> None:
        status, headers, body = answer_for(error, x.method, x.path)
        # Refused before its body was read. The client sends its whole body before it reads
        # an answer, and the server stops delivering a body once the answer is complete: so
        # take the body in first (bounded), then answer. Close only when the body's end was
        # not reached: a client still writing its body when the connection closes (Go's,
        # as containerd's) may report the broken write instead of the refusal.
        if may_carry_body(cast(dict[str, Any], scope)["headers"]) and not await drain_body(receive):
            headers["connection"] = "close"
        await self._answer(x, send, (status, headers, body))

    @staticmethod
    async def _answer(x: Exchange, send: ASGISendCallable, answer: Answer) -> None:
        """An answer made here, before either dispatcher ran."""
        status, headers, body = answer
        x.status, x.length = status, len(body)
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        raw += [API_VERSION, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _stamping(x: Exchange, send: ASGISendCallable) -> ASGISendCallable:
    """`send`, adding the request id to the answer and counting the body bytes sent."""
    stamp = (REQUEST_ID_HEADER, x.request_id.encode("ascii"))

    async def stamped(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), stamp]}
        elif message["type"] == "http.response.body":
            x.sent += len(message.get("body", b""))
        await send(message)

    return stamped


def _counting(x: Exchange, receive: ASGIReceiveCallable) -> ASGIReceiveCallable:
    """`receive`, counting the body bytes received."""

    async def counted() -> Any:
        message = await receive()
        if message["type"] == "http.request":
            x.received += len(message.get("body", b""))
        return message

    return counted


def _answering(x: Exchange, send: ASGISendCallable) -> ASGISendCallable:
    """`send`, adding the common headers to the answer and noting it in the exchange."""

    async def answer(message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), API_VERSION]
            x.status = message["status"]
            for name, value in headers:
                if name.lower() == b"content-length":
                    x.length = int(value)
            message = {**message, "headers": headers}
        await send(message)

    return answer


def create_app(registry: Registry, config: Config | None = None) -> RegdApp:
    config = config or Config()
    app = RegdApp("regd")
    app.registry = registry
    app.draining = trio.Event()
    app.direct = api.Router(api.DIRECT_ROUTES)
    if config.metrics:
        app.metrics = obs.enable()
        if config.metrics_addr is not None:
            app.metrics_port = config.metrics_port
    authenticator = build_authenticator(config, registry.metadata, registry.metadata.clock)
    if authenticator is not None:
        app.gate = Gate(authenticator, admin_token=config.admin_token, metrics=app.metrics)
        install_auth(app, app.gate)
    app.access_logging = config.access_log
    app.config.update(
        REGD_ADMIN_TOKEN=config.admin_token,
        REGD_CONFIG=config,
        REGD_METRICS=app.metrics,
        REGD_READY_TIMEOUT=config.ready_timeout,
        REGD_GC_POLICY=Policy(
            grace_seconds=config.gc_grace,
            delete_untagged=config.gc_delete_untagged,
            upload_max_age=config.upload_max_age,
        ),
        MAX_CONTENT_LENGTH=CONTROL_BODY_LIMIT,
        # Garbage collection and verification answer when they are done, however long.
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    for blueprint in api.BLUEPRINTS:
        app.register_blueprint(blueprint)
    if config.ui:
        ui.install(app, config)
    if app.metrics is not None:
        app.register_blueprint(api.METRICS_BLUEPRINT)

    @app.errorhandler(Exception)
    async def _error(error: Exception) -> Response:
        status, headers, body = answer_for(error, request.method, request.path)
        return Response(body, status=status, headers=headers)

    if config.event_endpoints:
        # From here on, changes write their events (regd.metadata.outbox).
        registry.metadata.configure_events(routing_for(config))

        @app.before_serving
        async def _start_events() -> None:
            app.add_background_task(run_events, registry.metadata, config)

    mirrors = registry.mirrors
    if mirrors is not None:

        @app.before_serving
        async def _start_mirrors() -> None:
            # Blob fills outlive the request that started them (its client may leave).
            await app.nursery.start(mirrors.run)

        @app.after_serving
        async def _stop_mirrors() -> None:
            mirrors.stop()

    if config.gc_interval or config.upload_purge_interval or config.retention:

        @app.before_serving
        async def _start_housekeeping() -> None:
            app.add_background_task(housekeeping, registry, config, app.metrics)

    return app


async def housekeeping(
    registry: Registry, config: Config, metrics: obs.Metrics | None = None
) -> None:
    """Periodic garbage collection, upload purging and retention, in every worker.

    Workers sharing a database take turns through leases; first runs are spread randomly
    so replicas started together do not all try at once.
    """
    jobs: dict[str, tuple[float, Callable[[], Awaitable[None]]]] = {}
    if config.gc_interval:
        jobs["gc"] = (config.gc_interval, lambda: _collect(registry, config, metrics))
    if config.upload_purge_interval:
        jobs["uploads"] = (
            config.upload_purge_interval,
            lambda: _purge(registry, config),
        )
    if config.retention and config.retention_interval:
        jobs["retention"] = (config.retention_interval, lambda: _retain(registry, config))
    now = trio.current_time()
    due = {name: now + every * random.uniform(0.1, 1.0) for name, (every, _) in jobs.items()}
    while due:
        name = min(due, key=due.__getitem__)
        await trio.sleep_until(due[name])
        every, job = jobs[name]
        due[name] = trio.current_time() + every
        try:
            await job()
        except Conflict:
            log.info("%s skipped: another process is at it", name)
        except Exception:
            # Housekeeping must outlive a failing database or disk; the next round retries.
            log.exception("%s failed", name)


async def _collect(registry: Registry, config: Config, metrics: obs.Metrics | None) -> None:
    policy = Policy(
        grace_seconds=config.gc_grace,
        delete_untagged=config.gc_delete_untagged,
        upload_max_age=config.upload_max_age,
    )
    plan = await registry.lifecycle.collect(policy, dry_run=False)
    totals = plan.to_json()["totals"]
    if metrics is not None:
        metrics.collected("schedule", plan.bytes_freed, plan.seconds)
    log.info(
        "gc manifests=%d blobs=%d uploads=%d bytes_freed=%d seconds=%.2f",
        totals["manifests"],
        totals["blobs"],
        totals["uploads"],
        totals["bytes_freed"],
        plan.seconds,
    )


async def _purge(registry: Registry, config: Config) -> None:
    purged = await registry.lifecycle.purge_uploads(config.upload_max_age)
    if purged:
        log.info("purged stale uploads=%d", purged)


async def _retain(registry: Registry, config: Config) -> None:
    if (await registry.maintenance.state()).enabled:
        log.info("retention skipped: maintenance mode is on")
        return
    removed = await registry.repositories.apply_retention(
        [
            (rule.repositories, RetentionPolicy(rule.keep_last, rule.keep, rule.older_than))
            for rule in config.retention
        ],
        lease_seconds=max(config.retention_interval, 60.0),
    )
    for repository, tags in removed.items():
        log.info("retention repository=%s removed_tags=%d", repository, len(tags))
