"""The Quart-Trio application: API blueprints, error mapping, and bounded request bodies."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Response, g, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest

from regd import api
from regd.api import errors
from regd.api.auth import Gate
from regd.api.auth import install as install_auth
from regd.auth.wiring import build_authenticator
from regd.config import Config
from regd.errors import Conflict
from regd.registry import Policy, Registry, RetentionPolicy

API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")
# How much of a request body may wait in memory for the handler to consume it.
BODY_BUFFER_LIMIT = 4 * 1024 * 1024

access_log = logging.getLogger("regd.access")
log = logging.getLogger("regd.housekeeping")


class BoundedBody(TrioBody):
    """A request body whose reader applies backpressure to the connection.

    Quart's body collects whatever the server delivers; for multi-gigabyte blob uploads
    onto a slower disk that would be the whole blob in memory. Here the receiving side
    waits until the handler has drained the buffer below a limit.
    """

    def __init__(self, expected_content_length: int | None, max_content_length: int | None):
        super().__init__(expected_content_length, max_content_length)
        self._drained = trio.Event()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._drained.set()
        return data

    async def wait_for_room(self) -> None:
        while len(self._data) >= BODY_BUFFER_LIMIT and not self._complete.is_set():
            self._drained = trio.Event()
            await self._drained.wait()


class BoundedRequest(TrioRequest):
    body_class = BoundedBody


class BoundedHTTPConnection(TrioASGIHTTPConnection):
    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: BoundedRequest, receive: ASGIReceiveCallable
    ) -> None:
        body = request.body
        assert isinstance(body, BoundedBody)
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                else:
                    await body.wait_for_room()
            elif message["type"] == "http.disconnect":
                break
        # The client is gone: cancel the handler, whose cleanup is shielded.
        nursery.cancel_scope.cancel()


class RegdApp(QuartTrio):
    asgi_http_class = BoundedHTTPConnection
    request_class = BoundedRequest
    direct: api.Router | None = None

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if (
            self.direct is not None
            and scope["type"] == "http"
            and await self.direct.handle(scope, receive, send)
        ):
            return
        await super().__call__(scope, receive, send)


def create_app(registry: Registry, config: Config | None = None) -> RegdApp:
    config = config or Config()
    access_logging = config.access_log
    app = RegdApp("regd")
    app.config.update(
        REGD_REGISTRY=registry,
        REGD_ADMIN_TOKEN=config.admin_token,
        REGD_GC_POLICY=Policy(
            grace_seconds=config.gc_grace,
            delete_untagged=config.gc_delete_untagged,
            upload_max_age=config.upload_max_age,
        ),
        # Blob bodies are streamed and bounded by the handlers themselves.
        MAX_CONTENT_LENGTH=None,
        BODY_TIMEOUT=None,
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    for blueprint in api.BLUEPRINTS:
        app.register_blueprint(blueprint)
    errors.install(app)
    # auth: None when authentication is off (regd.auth.wiring), else every request passes it
    authenticator = build_authenticator(config, registry.metadata)
    gate = None if authenticator is None else Gate(authenticator, admin_token=config.admin_token)
    if gate is not None:
        install_auth(app, gate)
    app.direct = api.Router(api.DIRECT_ROUTES, registry, access_log=access_logging, gate=gate)

    @app.after_request
    async def _common_headers(response: Response) -> Response:
        response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
        if access_logging and access_log.isEnabledFor(logging.INFO):
            took = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
            access_log.info(
                "method=%s path=%s status=%d length=%s ms=%.1f remote=%s",
                request.method,
                request.path,
                response.status_code,
                response.content_length,
                took,
                request.remote_addr,
            )
        return response

    if config.gc_interval or config.upload_purge_interval or config.retention:

        @app.before_serving
        async def _start_housekeeping() -> None:
            app.add_background_task(housekeeping, registry, config)

    if access_logging:

        @app.before_request
        async def _start_clock() -> None:
            g.started = time.perf_counter()

    return app


async def housekeeping(registry: Registry, config: Config) -> None:
    """Periodic garbage collection, upload purging and retention, in every worker.

    Workers sharing a database take turns through leases; first runs are spread randomly
    so replicas started together do not all try at once.
    """
    jobs: dict[str, tuple[float, Callable[[], Awaitable[None]]]] = {}
    if config.gc_interval:
        jobs["gc"] = (config.gc_interval, lambda: _collect(registry, config))
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


async def _collect(registry: Registry, config: Config) -> None:
    policy = Policy(
        grace_seconds=config.gc_grace,
        delete_untagged=config.gc_delete_untagged,
        upload_max_age=config.upload_max_age,
    )
    plan = await registry.lifecycle.collect(policy, dry_run=False)
    totals = plan.to_json()["totals"]
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
    removed = await registry.repositories.apply_retention(
        [
            (rule.repositories, RetentionPolicy(rule.keep_last, rule.keep, rule.older_than))
            for rule in config.retention
        ],
        lease_seconds=max(config.retention_interval, 60.0),
    )
    for repository, tags in removed.items():
        log.info("retention repository=%s removed_tags=%d", repository, len(tags))
