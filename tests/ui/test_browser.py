"""The UI in a real browser, with authentication on: what each account sees, navigation
from the catalog down to layers and referrers, escaping, and deleting a tag (with the
session's CSRF token, and refused without it).

Accounts: alice may do everything; bob may only pull demo/**; anonymous callers may pull
other/**.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.helpers.http_api import ApiClient
from tests.helpers.servers import RegdServer
from tests.ui.conftest import (
    UiClient,
    access_rules,
    check_headers,
    csrf_of,
    parse_strictly,
    start_regd,
    wait_for,
)
from tests.ui.seed import (
    ANNOTATION_MARKUP,
    LABEL_MARKUP,
    SBOM_TYPE,
    SIGNATURE_TYPE,
    Seeded,
    seed,
)

PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-1"}
Shot = Callable[[WebDriver, str], Path]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegdServer]:
    folder = tmp_path_factory.mktemp("ui-auth")
    htpasswd = folder / "htpasswd"
    # Cost 4: the fastest bcrypt, since these hashes guard nothing.
    htpasswd.write_text(
        "".join(
            f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()}\n"
            for user, pw in PASSWORDS.items()
        )
    )
    rules = access_rules(
        {"who": "alice", "repositories": ["**"], "actions": ["pull", "push", "delete", "catalog"]},
        {"who": "bob", "repositories": ["demo/**"], "actions": ["pull"]},
        {"who": "anonymous", "repositories": ["other/**"], "actions": ["pull"]},
    )
    regd = start_regd(tmp_path_factory, {"REGD_AUTH_HTPASSWD": str(htpasswd), "REGD_ACCESS": rules})
    yield regd
    regd.stop()


@pytest.fixture(scope="module")
def api(server: RegdServer) -> Iterator[ApiClient]:
    client = ApiClient(server.url)
    client.http.auth = httpx.BasicAuth("alice", PASSWORDS["alice"])
    yield client
    client.close()


@pytest.fixture(scope="module")
def seeded(api: ApiClient) -> Seeded:
    return seed(api)


def _raw(driver: WebDriver, server: RegdServer) -> str:
    """The page the browser shows, fetched again with its cookie: the HTML as served (the
    browser's page_source is its own re-serialization), parsed strictly."""
    cookie = driver.get_cookie("regd_ui")
    path = driver.current_url.removeprefix(server.url).split("#")[0]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        if cookie:
            http.cookies.set("regd_ui", cookie["value"], path="/ui/")
        answer = http.get(path)
    assert answer.status_code == 200, f"{path}: {answer.status_code}"
    check_headers(answer)
    parse_strictly(answer.text, path)
    return answer.text


def _title(driver: WebDriver, expected: str) -> None:
    wait_for(lambda: driver.title == expected, f"the title {expected!r} (is {driver.title!r})")


def _log_in(driver: WebDriver, server: RegdServer, user: str) -> None:
    """A fresh browser session logged in as `user`, through the login form."""
    driver.delete_all_cookies()
    driver.get(f"{server.url}/ui/login")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[user])
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    wait_for(
        lambda: f"Signed in as {user}" in driver.find_element(By.CLASS_NAME, "who").text,
        f"{user}'s login",
    )


def _main_text(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "main").text)


def test_without_the_catalog_right_a_repository_is_opened_by_name(
    browser: WebDriver, server: RegdServer, seeded: Seeded, screenshots: Shot
) -> None:
    """Anonymous may pull other/** but not list: as with GET /v2/_catalog, no names are
    shown (not even pullable ones), and the page offers to open one by name."""
    browser.delete_all_cookies()
    browser.get(f"{server.url}/ui/")
    _title(browser, "Repositories · regd")
    text = _main_text(browser)
    assert "may not list the repositories" in text
    assert "other/lib" not in text
    assert seeded.repository not in text
    screenshots(browser, "catalog-anonymous")
    browser.find_element(By.ID, "name").send_keys("other/lib")
    browser.find_element(By.CSS_SELECTOR, "form.search button[type=submit]").click()
    _title(browser, "other/lib — tags · regd")
    _raw(browser, server)


def test_log_in_and_walk_from_catalog_to_referrers(
    browser: WebDriver, server: RegdServer, seeded: Seeded, screenshots: Shot
) -> None:
    browser.delete_all_cookies()
    browser.get(f"{server.url}/ui/")
    browser.find_element(By.LINK_TEXT, "Log in").click()
    _title(browser, "Log in · regd")
    screenshots(browser, "login")
    _raw(browser, server)
    browser.find_element(By.ID, "user").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["alice"])
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    _title(browser, "Repositories · regd")
    assert "Signed in as alice" in browser.find_element(By.CLASS_NAME, "who").text
    assert seeded.repository in _main_text(browser)
    screenshots(browser, "catalog")
    _raw(browser, server)

    browser.find_element(By.LINK_TEXT, seeded.repository).click()
    _title(browser, f"{seeded.repository} — tags · regd")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.tags tbody tr")
    tags = [row.find_element(By.CSS_SELECTOR, "th").text for row in rows]
    assert {"v1", "v2", "multi", "doomed"} <= set(tags)
    multi = rows[tags.index("multi")].text
    assert "linux/amd64, linux/arm64" in multi
    copy = browser.find_element(By.CSS_SELECTOR, "button[data-copy^='docker pull']")
    assert copy.get_attribute("data-copy").startswith(f"docker pull {server.host}/demo/app")
    screenshots(browser, "repository")
    _raw(browser, server)

    browser.find_element(By.LINK_TEXT, seeded.tag).click()
    _title(browser, f"{seeded.repository}@{seeded.digest[:19]} · regd")
    assert "/bin/app" in _main_text(browser)
    screenshots(browser, "image")
    _raw(browser, server)

    browser.find_element(By.LINK_TEXT, "Layers").click()
    wait_for(lambda: browser.current_url.endswith("#layers"), "the layers anchor")
    layer_rows = browser.find_elements(By.CSS_SELECTOR, "#layers + table tbody tr")
    assert len(layer_rows) == len(seeded.layers)
    for row, digest in zip(layer_rows, seeded.layers, strict=True):
        assert digest[:19] in row.text
    screenshots(browser, "layers")

    browser.find_element(By.PARTIAL_LINK_TEXT, "Referrers (2)").click()
    _title(browser, f"{seeded.repository}@{seeded.digest[:19]} — referrers · regd")
    text = _main_text(browser)
    assert SIGNATURE_TYPE in text
    assert SBOM_TYPE in text
    screenshots(browser, "referrers")
    _raw(browser, server)
    Select(browser.find_element(By.ID, "artifactType")).select_by_value(SBOM_TYPE)
    browser.find_element(By.CSS_SELECTOR, "form.search button[type=submit]").click()
    wait_for(lambda: "artifactType=" in browser.current_url, "the filtered referrers")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.referrers tbody tr")
    assert len(rows) == 1
    assert SBOM_TYPE in rows[0].text
    # The filter is in the address: opened again, it shows the same.
    browser.get(browser.current_url)
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.referrers tbody tr")) == 1

    browser.find_element(By.LINK_TEXT, "Usage").click()
    _title(browser, "Storage usage · regd")
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.unique")
    assert "other/lib" in _main_text(browser)
    screenshots(browser, "usage")
    _raw(browser, server)


def test_markup_a_client_pushed_renders_inert(
    browser: WebDriver, server: RegdServer, seeded: Seeded
) -> None:
    """Labels, environment, history and annotations hold markup that would change the
    title or add elements if it ran; the browser shows it as text. Repository and tag
    names cannot hold markup (their grammar forbids '<'), so the markup that reaches the
    pages through them is a request's own: a search and a repository name in the query."""
    _log_in(browser, server, "alice")
    browser.get(f"{server.url}/ui/image?repository={seeded.repository}&reference={seeded.tag}")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "table.labels"), "the labels")
    assert "pwned" not in browser.title
    assert browser.find_elements(By.ID, "pwned-history") == []
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    labels = browser.find_element(By.CSS_SELECTOR, "table.labels").text
    assert LABEL_MARKUP in labels
    annotations = browser.find_element(By.CSS_SELECTOR, "#annotations + table").text
    assert ANNOTATION_MARKUP in annotations
    assert "<b id=pwned-history>" in _main_text(browser)

    browser.get(f"{server.url}/ui/referrers?repository={seeded.repository}&digest={seeded.digest}")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "table.referrers"), "referrers")
    assert ANNOTATION_MARKUP in _main_text(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert "pwned" not in browser.title

    browser.get(f"{server.url}/ui/?q=<script>document.title='pwned-q'</script>")
    wait_for(lambda: browser.find_elements(By.ID, "q"), "the search page")
    assert "pwned" not in browser.title
    assert browser.find_element(By.ID, "q").get_attribute("value").startswith("<script>")
    browser.get(f"{server.url}/ui/repository?name=<b id=pwned-name>x</b>")
    wait_for(lambda: "Error" in browser.title, "the error page")
    assert browser.find_elements(By.ID, "pwned-name") == []
    assert "<b id=pwned-name>" in _main_text(browser)


def test_delete_a_tag_in_the_browser(
    browser: WebDriver, server: RegdServer, seeded: Seeded, api: ApiClient
) -> None:
    assert "doomed" in api.tags(seeded.repository)
    _log_in(browser, server, "alice")
    browser.get(f"{server.url}/ui/repository?name={seeded.repository}&order=name")
    _title(browser, f"{seeded.repository} — tags · regd")
    button = browser.find_element(By.CSS_SELECTOR, "button[aria-label='Delete tag doomed']")
    button.click()
    # The page asks first; the form goes with its CSRF token once confirmed.
    wait_for(lambda: _alert(browser), "the confirmation").accept()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "p.notice"), "the deletion's notice")
    assert browser.find_element(By.CSS_SELECTOR, "p.notice").text == "Tag doomed was deleted."
    assert "doomed" not in api.tags(seeded.repository)
    assert "v2" in api.tags(seeded.repository)


def _alert(driver: WebDriver) -> object:
    try:
        return driver.switch_to.alert
    except Exception:
        return None


def test_a_delete_without_the_csrf_token_is_refused(
    server: RegdServer, seeded: Seeded, api: ApiClient
) -> None:
    alice, other = UiClient(server.url), UiClient(server.url)
    try:
        alice.login("alice", PASSWORDS["alice"])
        other.login("alice", PASSWORDS["alice"])
        foreign = csrf_of(other.page(f"/ui/repository?name={seeded.repository}"))
        form = {"repository": seeded.repository, "tag": "v2"}
        for extra in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": foreign}):
            answer = alice.http.post("/ui/delete", data={**form, **extra})
            assert answer.status_code == 403, (extra, answer.text)
            assert "CSRF token" in answer.text
            parse_strictly(answer.text, "the refusal")
        # No session at all.
        answer = httpx.post(f"{server.url}/ui/delete", data={**form, "csrf": foreign})
        assert answer.status_code == 403
        assert "v2" in api.tags(seeded.repository)
    finally:
        alice.close()
        other.close()


def test_an_account_that_may_only_pull_cannot_delete(
    server: RegdServer, seeded: Seeded, api: ApiClient
) -> None:
    bob = UiClient(server.url)
    try:
        bob.login("bob", PASSWORDS["bob"])
        page = bob.page(f"/ui/repository?name={seeded.repository}")
        assert "/ui/delete" not in page
        answer = bob.http.post(
            "/ui/delete",
            data={"repository": seeded.repository, "tag": "v2", "csrf": csrf_of(page)},
        )
        assert answer.status_code == 403
        assert "bob may not delete" in answer.text
        assert "v2" in api.tags(seeded.repository)
    finally:
        bob.close()


def test_a_hidden_repository_is_not_found_and_login_is_offered(
    server: RegdServer, seeded: Seeded
) -> None:
    anonymous = UiClient(server.url)
    try:
        page = anonymous.page(f"/ui/repository?name={seeded.repository}", status=404)
        assert "/ui/login?next=" in page
        listing = anonymous.page("/ui/", status=403)
        assert "other/lib" not in listing
        assert "/ui/login?next=" in listing
        usage = anonymous.page("/ui/usage")
        # Naming repositories needs the catalog right, even those anonymous may pull.
        assert seeded.repository not in usage
        assert "other/lib" not in usage
        assert "may not list the repositories" in usage
        # Registry-wide figures are the admin's.
        assert "Garbage collection" not in usage
    finally:
        anonymous.close()


def test_a_wrong_password_is_told_and_logs_nobody_in(server: RegdServer) -> None:
    client = UiClient(server.url)
    try:
        csrf = csrf_of(client.page("/ui/login"))
        answer = client.http.post(
            "/ui/login", data={"user": "alice", "password": "wrong", "csrf": csrf}
        )
        assert answer.status_code == 401
        assert "wrong user name or password" in answer.text
        assert "Signed in" not in client.page("/ui/", status=403)
        # Without the form's token the password is not even checked.
        answer = client.http.post(
            "/ui/login", data={"user": "alice", "password": PASSWORDS["alice"]}
        )
        assert answer.status_code == 403
    finally:
        client.close()


def test_keyboard_zoom_and_dark_mode(
    browser: WebDriver, server: RegdServer, seeded: Seeded, screenshots: Shot
) -> None:
    image = f"{server.url}/ui/image?repository={seeded.repository}&reference={seeded.tag}"
    _log_in(browser, server, "alice")
    browser.get(image)
    wait_for(lambda: browser.find_elements(By.ID, "layers"), "the image page")
    # The first Tab reaches the skip link, and following it puts the focus on the content.
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    assert focused.get_attribute("class") == "skip"
    focused.send_keys(Keys.ENTER)
    wait_for(lambda: browser.switch_to.active_element.get_attribute("id") == "main", "focus")
    # Every form control has a label (or an aria-label) that names it.
    browser.get(f"{server.url}/ui/login")
    for control in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden]), select"):
        control_id = control.get_attribute("id")
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{control_id}']")

    # 200 % zoom of a 1280 px window is a 640 px viewport: nothing but the tag table's own
    # scroller may need a horizontal scrollbar.
    try:
        browser.set_window_size(640, 900)
        for path in (image, f"{server.url}/ui/", f"{server.url}/ui/usage"):
            browser.get(path)
            wait_for(lambda: browser.find_elements(By.ID, "main"), path)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{path} is {overflow} px wider than the viewport"
    finally:
        browser.set_window_size(1280, 900)

    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    try:
        browser.get(image)
        wait_for(lambda: browser.find_elements(By.ID, "layers"), "the image page")
        background = browser.execute_script(
            "return getComputedStyle(document.body).backgroundColor"
        )
        red, green, blue = (int(x) for x in re.findall(r"\d+", background)[:3])
        assert red + green + blue < 100, background
        screenshots(browser, "image-dark")
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
