"""`/healthz` and `/readyz`, for load balancers and orchestrators; no authentication.

`/healthz` says the process answers. `/readyz` says whether it should get traffic: the
database and the storage each answer within `ready_timeout`, and the process is not
draining (a graceful shutdown has begun: the answer turns 503 so a load balancer stops
sending before the process exits; a probe waiting on its checks then answers at once).

A check that does not answer in time is not waited for, and not started again while it
is still running: every probe then reports it as hanging instead of piling up another
stuck call behind it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from quart import Blueprint, Response, current_app

from regd.api.http import exchange, json_response
from regd.registry import Registry
from regd.registry.health import check_database, check_storage

bp = Blueprint("health", __name__)


class _Round:
    """One run of a check, shared by every probe that arrives while it runs."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.problem: str | None = None


class Check:
    def __init__(self, run: Callable[[], Awaitable[None]]) -> None:
        self._run = run
        self._round: _Round | None = None

    async def problem(self, within: float) -> str | None:
        """None when the check passed; else what went wrong, in one line."""
        current = self._round
        if current is None:
            current = self._round = _Round()
            # A task of its own, outside the request: a probe that gives up waiting
            # leaves it to finish (every call it makes has a timeout of its own).
            trio.lowlevel.spawn_system_task(self._carry_out, current)
        with trio.move_on_after(within):
            await current.done.wait()
            return current.problem
        return f"no answer within {within:g} s"

    async def _carry_out(self, current: _Round) -> None:
        try:
            await self._run()
        except Exception as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            current.problem = lines[0] if lines else type(exc).__name__
        finally:
            self._round = None
            current.done.set()


class Readiness:
    """The checks of one application's registry."""

    def __init__(self, registry: Registry) -> None:
        self.checks = {
            "database": Check(lambda: check_database(registry)),
            "storage": Check(lambda: check_storage(registry)),
        }

    async def problems(self, within: float) -> dict[str, str | None]:
        found: dict[str, str | None] = {}

        async def one(name: str, check: Check) -> None:
            found[name] = await check.problem(within)

        async with trio.open_nursery() as nursery:
            for name, check in self.checks.items():
                nursery.start_soon(one, name, check)
        return {name: found[name] for name in self.checks}


_NO_STORE = {"cache-control": "no-store"}


@bp.route("/healthz", methods=["GET", "HEAD"])
async def healthz() -> Response:
    return json_response({"status": "ok"}, headers=_NO_STORE)


@bp.route("/readyz", methods=["GET", "HEAD"])
async def readyz() -> Response:
    draining: trio.Event = getattr(current_app, "draining", trio.Event())
    readiness: Readiness | None = current_app.extensions.get("regd.readiness")
    if readiness is None:
        readiness = current_app.extensions["regd.readiness"] = Readiness(exchange().registry)
    within: float = current_app.config["REGD_READY_TIMEOUT"]
    problems: dict[str, str | None] | None = None

    async def check(cancel: trio.CancelScope) -> None:
        nonlocal problems
        problems = await readiness.problems(within)
        cancel.cancel()

    async def watch(cancel: trio.CancelScope) -> None:
        await draining.wait()
        cancel.cancel()

    if not draining.is_set():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(check, nursery.cancel_scope)
            nursery.start_soon(watch, nursery.cancel_scope)
    if problems is None or draining.is_set():
        return json_response({"status": "draining", "checks": {}}, status=503, headers=_NO_STORE)
    failed = {name: problem for name, problem in problems.items() if problem is not None}
    doc = {
        "status": "unavailable" if failed else "ready",
        "checks": {name: problem or "ok" for name, problem in problems.items()},
    }
    return json_response(doc, status=503 if failed else 200, headers=_NO_STORE)
