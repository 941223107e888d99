"""The UI's pages. Every page's state is in its query string, so links can be bookmarked.

Who may see what: with authentication off (no gate) every page and tag deletion are open,
as the API's DELETE is then. With it on, the session's account is asked of the policy: a
repository the caller may not pull is answered as not found, and the delete form appears
(and works) only where the policy grants delete.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import trio
from quart import Blueprint, Response, current_app, g, render_template, request
from werkzeug.exceptions import HTTPException

from regd.api.auth import Viewer
from regd.api.errors import answer_for
from regd.api.http import exchange
from regd.api.origin import quart_origin
from regd.auth import ANONYMOUS, Authenticator, Identity
from regd.auth.errors import AuthError, Throttled
from regd.auth.scopes import ADMIN, CATALOG, DELETE, PULL
from regd.config import Config
from regd.errors import BackendError, NameUnknown, RegistryError
from regd.registry import Registry, validation
from regd.registry.browse import TAG_COUNT_CAP, platform_name
from regd.ui.session import (
    COOKIE,
    SESSION_SECONDS,
    Session,
    Signer,
    identity_of,
    load_secret,
    new_session,
)

log = logging.getLogger("regd.ui")

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

CATALOG_PAGE = 50
TAG_PAGE = 50
USAGE_BARS = 20
# How old a usage report the page may show, and how long a request waits for one.
USAGE_MAX_AGE = 30.0
USAGE_WAIT = 60.0
# The usage chart, in its own units: names on the left, bars to the right of them.
CHART_LABEL = 30
CHART_BAR_X = 240
CHART_BAR_WIDTH = 480

# No inline script or style anywhere: the pages load /ui/static/ only.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class UsageBusy(BackendError):
    kind = "usage report"


@dataclass(slots=True)
class UiState:
    # None when authentication is off.
    auth: Authenticator | None
    config: Config
    # Read (or made) by the first request to the UI, so an app that never serves a page
    # never touches the key directory.
    signer: Signer | None = None
    # The last usage report and when (trio's clock) it was made; one request at a time
    # makes a new one, the others wait for it (see _usage_report).
    usage: tuple[float, dict[str, Any]] | None = None
    usage_lock: trio.Lock = field(default_factory=trio.Lock)


def install(app: Any, config: Config) -> None:
    """Serve the UI from `app`."""
    auth = None if app.gate is None else app.gate.authenticator
    app.config["REGD_UI"] = UiState(auth, config)
    app.register_blueprint(bp)


def _state() -> UiState:
    state: UiState = current_app.config["REGD_UI"]
    return state


def _registry() -> Registry:
    return exchange().registry


class Caller:
    """Who is asking, and what the policy lets them do."""

    def __init__(self, identity: Identity, auth: Authenticator | None) -> None:
        self.identity = identity
        self.auth = auth

    @property
    def name(self) -> str | None:
        return self.identity.name

    @property
    def auth_on(self) -> bool:
        return self.auth is not None

    def may(self, action: str, repository: str | None = None) -> bool:
        if self.auth is None:
            return True
        return self.auth.may(self.identity, action, repository)

    def may_pull(self, repository: str) -> bool:
        return self.may(PULL, repository)


def _caller() -> Caller:
    # Unset only when loading the session itself failed (its error page still renders).
    caller: Caller = g.get("ui_caller") or Caller(ANONYMOUS, _state().auth)
    return caller


def _session() -> Session:
    session: Session = g.get("ui_session") or new_session(_now())
    return session


def _signer() -> Signer:
    signer = _state().signer
    assert signer is not None, "the session key is loaded before any page is made"
    return signer


# Reading the session key is the UI's only blocking work: once per process, one at a time.
_KEY_LIMITER = trio.CapacityLimiter(1)


@bp.before_request
async def _load_session() -> None:
    if request.endpoint == "ui.static":
        return  # CSS and the script need no session, and get no cookie
    state = _state()
    if state.signer is None:
        secret = await trio.to_thread.run_sync(
            load_secret, state.config.auth_keys_dir, limiter=_KEY_LIMITER
        )
        state.signer = Signer(secret)
    now = _now()
    session = state.signer.load(request.cookies.get(COOKIE), now)
    g.ui_fresh = session is None
    if session is None:
        session = new_session(now)
    g.ui_session = session
    identity = ANONYMOUS if state.auth is None else await identity_of(state.auth, session)
    g.ui_caller = Caller(identity, state.auth)
    if identity.name is not None:
        exchange().user = identity.name


def _now() -> float:
    return float(exchange().registry.metadata.clock.now())


@bp.after_request
async def _headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if getattr(g, "ui_fresh", False):
        _set_cookie(response, g.ui_session)
    return response


def _set_cookie(response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        _signer().dump(session),
        max_age=SESSION_SECONDS,
        path="/ui/",
        secure=request.scheme == "https",
        httponly=True,
        samesite="Strict",
    )


@bp.app_template_filter("bytes")
def _bytes(value: int | float) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@bp.app_template_filter("when")
def _when(value: float | None) -> str:
    if value is None:
        return ""
    moment = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("iso")
def _iso(value: float) -> str:
    moment = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@bp.app_template_filter("short")
def _short(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:12]}" if hexpart else digest


@bp.app_template_global("ui_url")
def _ui_url(page: str, **params: Any) -> str:
    """A page's link with its state in the query string (empty values left out)."""
    query = {k: v for k, v in params.items() if v not in (None, "")}
    base = f"/ui/{page}"
    return f"{base}?{urlencode(query)}" if query else base


async def _page(template: str, title: str, status: int = 200, **context: Any) -> Response:
    caller = _caller()
    body = await render_template(
        f"ui/{template}",
        title=title,
        caller=caller,
        # No signer only when reading its key failed: that error's page has no form.
        csrf="" if _state().signer is None else _signer().csrf_token(_session()),
        # Read through a short cache (regd.registry.maintenance): costs nothing per page.
        maintenance=await _registry().maintenance.state(),
        here=request.full_path.rstrip("?"),
        **context,
    )
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _need_pull(repository: str) -> str:
    """The checked name of a repository the caller may pull. One they may not is answered
    as unknown, so its existence does not leak."""
    name = validation.repository_name(repository)
    if not _caller().may_pull(name):
        raise NameUnknown(f"repository {name} is not known", {"name": name})
    return name


# -- pages -------------------------------------------------------------------------------


@bp.route("/", methods=["GET"])
async def catalog() -> Response:
    query = (request.args.get("q") or "").strip()[:255]
    after = request.args.get("after") or None
    caller = _caller()
    if not caller.may(CATALOG):
        # As GET /v2/_catalog: listing names is a right of its own, which pulling does
        # not give. A repository is still opened by its name.
        return await _page(
            "catalog.html",
            "Repositories",
            status=403,
            refused=True,
            login=None if caller.identity.authenticated else _ui_url("login", next="/ui/"),
        )

    def visible(name: str) -> bool:
        return query in name and caller.may_pull(name)

    page = await _registry().listings.catalog(CATALOG_PAGE, after, visible)
    following = page.items[-1] if page.more and page.items else None
    return await _page(
        "catalog.html",
        "Repositories",
        repositories=page.items,
        query=query,
        after=after,
        following=following,
    )


@bp.route("/repository", methods=["GET"])
async def repository() -> Response:
    name = _need_pull(request.args.get("name", ""))
    order = "name" if request.args.get("order") == "name" else "time"
    after = request.args.get("after") or None
    browsing = _registry().browsing
    listing = await browsing.tags(name, by_time=order == "time", after=after, limit=TAG_PAGE)
    # On the first page only: a count visits tags (up to TAG_COUNT_CAP of them).
    count = None if after else await browsing.tag_count(name)
    return await _page(
        "repository.html",
        f"{name} — tags",
        name=name,
        order=order,
        after=after,
        listing=listing,
        count=count,
        count_cap=TAG_COUNT_CAP,
        host=request.host,
        may_delete=_caller().may(DELETE, name),
        deleted=request.args.get("deleted", "")[:128],
    )


@bp.route("/image", methods=["GET"])
async def image() -> Response:
    name = _need_pull(request.args.get("repository", ""))
    reference = request.args.get("reference", "")
    view = await _registry().browsing.image(name, reference)
    referrers = await _registry().listings.referrers(name, view.digest, None)
    return await _page(
        "image.html",
        f"{name}@{view.digest[:19]}",
        name=name,
        reference=reference,
        view=view,
        referrers=len(referrers.index["manifests"]),
        platform_name=platform_name,
        host=request.host,
    )


@bp.route("/referrers", methods=["GET"])
async def referrers() -> Response:
    name = _need_pull(request.args.get("repository", ""))
    digest = str(validation.digest(request.args.get("digest", "")))
    artifact_type = (request.args.get("artifactType") or "").strip() or None
    everything = await _registry().listings.referrers(name, digest, None)
    types = sorted({m.get("artifactType", "") for m in everything.index["manifests"]})
    shown = [
        m
        for m in everything.index["manifests"]
        if artifact_type is None or m.get("artifactType") == artifact_type
    ]
    return await _page(
        "referrers.html",
        f"{name}@{digest[:19]} — referrers",
        name=name,
        digest=digest,
        artifact_type=artifact_type,
        types=types,
        referrers=shown,
    )


async def _usage_report(registry: Registry, config: Config) -> dict[str, Any]:
    """The registry's usage, at most USAGE_MAX_AGE seconds old. Computing it reads every
    manifest and blob row (seconds at 100,000 tags), so anyone may ask for the page but
    the work is done at most once per interval, whoever and however many ask."""
    state = _state()
    with trio.move_on_after(USAGE_WAIT):
        async with state.usage_lock:
            if state.usage is None or trio.current_time() - state.usage[0] > USAGE_MAX_AGE:
                report = await registry.lifecycle.usage(
                    grace_seconds=config.gc_grace, per_tag=False
                )
                state.usage = (trio.current_time(), report)
            return state.usage[1]
    raise UsageBusy(f"the usage report took longer than {USAGE_WAIT:.0f} s; try again")


@bp.route("/usage", methods=["GET"])
async def usage() -> Response:
    caller = _caller()
    config = _state().config
    registry = _registry()
    report = await _usage_report(registry, config)
    # Naming repositories is the catalog right's, as on the catalog page.
    listable = caller.may(CATALOG)
    repositories = [r for r in report["repositories"] if listable and caller.may_pull(r["name"])]
    # Registry-wide figures and the state of collection tell of every repository.
    whole = caller.may(ADMIN)
    biggest = sorted(repositories, key=lambda r: r["size"], reverse=True)[:USAGE_BARS]
    scale = max((r["size"] for r in biggest), default=0) or 1
    bars = [
        {
            "name": r["name"],
            "label": r["name"]
            if len(r["name"]) <= CHART_LABEL
            else r["name"][: CHART_LABEL - 1] + "…",
            "unique": CHART_BAR_WIDTH * r["unique"] / scale,
            "shared": CHART_BAR_WIDTH * r["shared"] / scale,
            "unique_bytes": r["unique"],
            "shared_bytes": r["shared"],
            "y": i * 24,
        }
        for i, r in enumerate(biggest)
    ]
    sweep_until = await registry.browsing.collection_running_until() if whole else None
    return await _page(
        "usage.html",
        "Storage usage",
        repositories=repositories,
        report=report if whole else None,
        bars=bars,
        chart_height=max(len(bars), 1) * 24,
        chart_width=CHART_BAR_X + CHART_BAR_WIDTH,
        bar_x=CHART_BAR_X,
        sweep_until=sweep_until,
        listable=listable,
        config=config,
        max_age=USAGE_MAX_AGE,
    )


@bp.route("/<path:rest>", methods=["GET"])
async def unknown(rest: str) -> Response:
    # Matched last (the more specific routes win), so a mistyped address under /ui/ gets
    # a page, with the UI's headers, rather than the API's JSON error.
    del rest
    return await _page("error.html", "Not found", status=404, message="no such page")


# -- changes (each needs the session's CSRF token) ---------------------------------------


async def _form() -> dict[str, str]:
    form = await request.form
    return {key: str(value) for key, value in form.items()}


async def _refuse(status: int, message: str) -> Response:
    return await _page("error.html", "Refused", status=status, message=message)


def _safe_next(target: str | None) -> str:
    """Only a page of the UI: never an address elsewhere (no open redirect)."""
    if (
        target
        and target.startswith("/ui/")
        and not target.startswith("/ui//")
        and target.isprintable()
        and len(target) <= 2048
    ):
        return target
    return "/ui/"


@bp.route("/delete", methods=["POST"])
async def delete_tag() -> Response:
    form = await _form()
    if not _signer().csrf_ok(None if g.ui_fresh else _session(), form.get("csrf")):
        return await _refuse(403, "the form's CSRF token is missing or wrong; reload the page")
    name = validation.repository_name(form.get("repository", ""))
    tag = validation.tag(form.get("tag", ""))
    caller = _caller()
    if not caller.may_pull(name):
        raise NameUnknown(f"repository {name} is not known", {"name": name})
    if not caller.may(DELETE, name):
        return await _refuse(403, f"{caller.identity.actor} may not delete tags of {name}")
    registry = _registry()
    # The API's writes meet this check at the front door (regd.app); the UI's here.
    await registry.maintenance.check_writable()
    origin = replace(quart_origin(), actor=caller.identity.name or "")
    await registry.manifests.delete(name, tag, origin=origin)
    state = _state()
    if state.auth is not None:
        await Viewer(caller.identity, state.auth, exchange().remote).audit("delete-tag", name, tag)
    target = _ui_url("repository", name=name, deleted=tag)
    return Response("", status=303, headers={"Location": target})


@bp.route("/login", methods=["GET"])
async def login_form() -> Response:
    return await _page(
        "login.html",
        "Log in",
        next=_safe_next(request.args.get("next")),
        problem="",
    )


@bp.route("/login", methods=["POST"])
async def login() -> Response:
    form = await _form()
    target = _safe_next(form.get("next"))
    state = _state()
    if not _signer().csrf_ok(None if g.ui_fresh else _session(), form.get("csrf")):
        return await _refuse(403, "the form's CSRF token is missing or wrong; reload the page")
    if state.auth is None:
        return await _refuse(404, "authentication is off: there is nothing to log in to")
    user = form.get("user", "")[:256]
    problem = ""
    try:
        checked = await state.auth.login(user, form.get("password", "")[:1024], _remote())
    except Throttled as exc:
        problem = f"too many failed attempts; try again in {exc.retry_after} s"
    except AuthError as exc:
        problem = str(exc)
    else:
        if checked.stamp is None:
            problem = "log in with an account's password, not a machine token"
        else:
            # A new session id on every login: a token seen before it is worth nothing.
            session = new_session(_now(), checked.identity.name, checked.stamp)
            response = Response("", status=303, headers={"Location": target})
            _set_cookie(response, session)
            g.ui_fresh = False
            return response
    return await _page("login.html", "Log in", status=401, next=target, problem=problem)


@bp.route("/logout", methods=["POST"])
async def logout() -> Response:
    form = await _form()
    if not _signer().csrf_ok(None if g.ui_fresh else _session(), form.get("csrf")):
        return await _refuse(403, "the form's CSRF token is missing or wrong; reload the page")
    response = Response("", status=303, headers={"Location": "/ui/"})
    _set_cookie(response, new_session(_now()))
    g.ui_fresh = False
    return response


def _remote() -> str:
    return exchange().remote or ""


# -- errors as pages ---------------------------------------------------------------------


@bp.errorhandler(RegistryError)
async def _registry_error(error: RegistryError) -> Response:
    status, _, _ = answer_for(error, request.method, request.path)
    if status == 404 and not _caller().identity.authenticated and _caller().auth_on:
        # Perhaps there, but not for an anonymous caller: offer to log in.
        target = _ui_url("login", next=request.full_path.rstrip("?"))
        return await _page(
            "error.html", "Not found", status=404, message=error.message, login=target
        )
    return await _page(
        "error.html",
        "Not found" if status == 404 else "Error",
        status=status,
        message=error.message,
    )


@bp.errorhandler(BackendError)
async def _backend_error(error: BackendError) -> Response:
    status, _, _ = answer_for(error, request.method, request.path)
    return await _page(
        "error.html",
        "Unavailable",
        status=status,
        message="the registry's storage or database failed; try again",
    )


@bp.errorhandler(HTTPException)
async def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    return await _page("error.html", "Error", status=status, message=error.description or "")
