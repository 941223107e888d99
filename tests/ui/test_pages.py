"""The UI with authentication off (the embedded default), over HTTP: paging through many
tags by both orders, anonymous tag deletion (the API's DELETE is open then too) still
bound to the session's CSRF token, and the setting that turns the UI off."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from html import unescape
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from regd.api.auth import need_for
from regd.app import create_app
from regd.config import Config
from regd.metadata import MetadataStore, sqlite_url
from regd.registry import Registry
from regd.storage import MemoryDriver
from regd.ui.views import TAG_PAGE as TAGS_PAGE
from tests.helpers.http_api import ApiClient
from tests.helpers.servers import RegdServer
from tests.ui.conftest import UiClient, csrf_of, start_regd
from tests.ui.seed import push_image

REPO = "many/tags"
COUNT = TAGS_PAGE * 2 + 7
_ROW_TAG = re.compile(r'<th scope="row"><a href="[^"]*">([^<]+)</a></th>')
_NEXT = re.compile(r'<a rel="next" href="([^"]+)">')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegdServer]:
    regd = start_regd(tmp_path_factory)
    yield regd
    regd.stop()


@pytest.fixture(scope="module")
def tagged(server: RegdServer) -> list[str]:
    """COUNT tags on one image, pushed oldest first: t000 is the oldest."""
    with ApiClient(server.url) as api:
        _, body, _ = push_image(api, REPO, "t000")
        names = [f"t{i:03d}" for i in range(COUNT)]
        for name in names[1:]:
            api.push_manifest(REPO, name, body)
    return names


@pytest.fixture
async def sqlite_registry(tmp_path: Path) -> AsyncIterator[Registry]:
    """For the in-process cases, which are about the app, not the database: SQLite only."""
    store = MetadataStore(sqlite_url(tmp_path / "regd.db"))
    store.create_schema()
    registry = Registry.create(MemoryDriver(), store)
    yield registry
    await registry.aclose()


def _walk(client: UiClient, first: str) -> list[list[str]]:
    pages = []
    path: str | None = first
    while path is not None:
        html = client.page(path)
        pages.append(_ROW_TAG.findall(html))
        following = _NEXT.search(html)
        path = unescape(following[1]) if following else None
        assert len(pages) <= COUNT, "the pages do not end"
    return pages


def test_paging_by_name_visits_every_tag_once(server: RegdServer, tagged: list[str]) -> None:
    client = UiClient(server.url)
    try:
        pages = _walk(client, f"/ui/repository?name={REPO}&order=name")
    finally:
        client.close()
    assert [len(p) for p in pages] == [TAGS_PAGE, TAGS_PAGE, 7]
    assert [tag for page in pages for tag in page] == tagged


def test_paging_newest_first_visits_every_tag_once(server: RegdServer, tagged: list[str]) -> None:
    client = UiClient(server.url)
    try:
        pages = _walk(client, f"/ui/repository?name={REPO}")
    finally:
        client.close()
    flat = [tag for page in pages for tag in page]
    assert sorted(flat) == tagged
    assert len(flat) == len(set(flat))


def test_anonymous_delete_follows_the_api_and_needs_the_token(
    server: RegdServer, tagged: list[str]
) -> None:
    victim = tagged[-1]
    client = UiClient(server.url)
    try:
        page = client.page(f"/ui/repository?name={REPO}&order=name")
        form = {"repository": REPO, "tag": victim}
        answer = client.http.post("/ui/delete", data=form)
        assert answer.status_code == 403
        with ApiClient(server.url) as api:
            assert victim in api.tags(REPO)
        answer = client.http.post("/ui/delete", data={**form, "csrf": csrf_of(page)})
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/ui/repository?name=many%2Ftags&deleted={victim}"
        with ApiClient(server.url) as api:
            assert victim not in api.tags(REPO)
        # A second time: the tag is gone, and the page says so (not a 500).
        answer = client.http.post("/ui/delete", data={**form, "csrf": csrf_of(page)})
        assert answer.status_code == 404
        assert "is not in repository" in answer.text
    finally:
        client.close()
    tagged.remove(victim)


def test_maintenance_mode_shows_on_every_page_and_refuses_deletion(
    server: RegdServer, tagged: list[str]
) -> None:
    victim = tagged[-1]
    client = UiClient(server.url)
    try:
        switch = client.http.put(
            "/admin/v1/maintenance", json={"enabled": True, "message": "moving <disks>"}
        )
        assert switch.status_code == 200, switch.text
        page = client.page(f"/ui/repository?name={REPO}&order=name")
        assert "maintenance mode" in page
        # The operator's message is escaped like everything else on the page.
        assert "moving &lt;disks&gt;" in page
        form = {"repository": REPO, "tag": victim, "csrf": csrf_of(page)}
        answer = client.http.post("/ui/delete", data=form)
        assert answer.status_code == 405
        assert "maintenance mode" in answer.text
        with ApiClient(server.url) as api:
            assert victim in api.tags(REPO)
    finally:
        client.http.put("/admin/v1/maintenance", json={"enabled": False})
        client.close()
    after = UiClient(server.url)
    try:
        assert "maintenance mode" not in after.page("/ui/")
    finally:
        after.close()


def test_bad_input_gets_an_error_page_not_a_500(server: RegdServer, tagged: list[str]) -> None:
    client = UiClient(server.url)
    try:
        for path, status in (
            (f"/ui/repository?name={REPO}&after=no-cursor", 400),
            (f"/ui/repository?name={REPO}&order=name&after=" + "x" * 300, 400),
            ("/ui/repository?name=UPPER", 400),
            ("/ui/repository?name=no/such", 404),
            (f"/ui/image?repository={REPO}&reference=sha256:zz", 400),
            (f"/ui/image?repository={REPO}&reference=missing", 404),
            (f"/ui/referrers?repository={REPO}&digest=nope", 400),
            ("/ui/no-such-page", 404),
        ):
            client.page(path, status=status)
        answer = client.http.post("/ui/login", data={"user": "x", "password": "y"})
        assert answer.status_code == 403
    finally:
        client.close()


def test_usage_shows_each_repository_with_a_chart(server: RegdServer, tagged: list[str]) -> None:
    client = UiClient(server.url)
    try:
        page = client.page("/ui/usage")
    finally:
        client.close()
    assert REPO in page
    assert '<rect class="unique"' in page
    # Authentication off: the registry-wide figures and collection state are shown.
    assert "Garbage collection" in page


async def test_the_ui_setting_turns_it_off(sqlite_registry: Registry, tmp_path: Path) -> None:
    for enabled in (True, False):
        config = Config(access_log=False, upload_purge_interval=0, ui=enabled, data_dir=tmp_path)
        app = create_app(sqlite_registry, config)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://regd") as http:
            answer = await http.get("/ui/static/ui.css")
        assert answer.status_code == (200 if enabled else 404)
        if not enabled:
            assert json.loads(answer.text)["errors"][0]["code"]


def test_the_gate_leaves_the_ui_to_its_session() -> None:
    assert need_for("GET", "/ui/") is None
    assert need_for("POST", "/ui/delete") is None
    assert need_for("GET", "/ui") is None
    # Only the UI's own prefix: a repository named like it is still guarded.
    need = need_for("GET", "/v2/ui/x/manifests/latest")
    assert need is not None
    assert need.action == "pull"


async def test_an_unusable_session_key_is_a_503_page(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "key-dir"
    not_a_dir.write_text("a file where the key directory should be")
    config = Config(access_log=False, upload_purge_interval=0, auth_key_dir=not_a_dir)
    transport = httpx.ASGITransport(app=create_app(sqlite_registry, config))
    async with httpx.AsyncClient(transport=transport, base_url="http://regd") as http:
        answer = await http.get("/ui/")
    assert answer.status_code == 503
    assert "storage or database failed" in answer.text
    assert answer.headers["content-security-policy"]


def test_login_goes_back_only_to_a_page_of_the_ui(server: RegdServer) -> None:
    """With authentication off there is no one to log in, but the form still names where
    it would go; a `next` elsewhere (or with a line break) becomes the catalog."""
    client = UiClient(server.url)
    try:
        for target, expected in (
            ("/ui/usage", "/ui/usage"),
            ("https://elsewhere.example/", "/ui/"),
            ("//elsewhere.example/ui/", "/ui/"),
            ("/ui//elsewhere.example/", "/ui/"),
            ("/ui/\r\nSet-Cookie: x=1", "/ui/"),
        ):
            page = client.page(f"/ui/login?{urlencode({'next': target})}")
            assert f'name="next" value="{expected}"' in page, target
    finally:
        client.close()
