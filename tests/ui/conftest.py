"""A real regd per module, Debian's chromium driven headless by selenium, and the checks
every page gets: strict HTML parsing and the security headers."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import html5lib
import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.helpers.servers import RegdServer, ServerStartError

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Where REGD_UI_SCREENSHOTS=DIR puts the screenshot the README shows (e.g. `docs`).
SCREENSHOTS_ENV = "REGD_UI_SCREENSHOTS"
PAGE_TIMEOUT = 30.0

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def start_regd(
    tmp_path_factory: pytest.TempPathFactory, env: Mapping[str, str] | None = None
) -> RegdServer:
    scratch = tmp_path_factory.mktemp("regd-ui")
    server = RegdServer(
        data_dir=scratch / "data", database_url=None, scratch=scratch, env=dict(env or {})
    )
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless chromium for the module (starting it is the slow part)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.access(path, os.X_OK) or shutil.which(path)):
            pytest.fail(f"{path} is missing: run scripts/setup", pytrace=False)
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[WebDriver, str], Path]:
    """Save the browser's view as `<name>.png` in a test artefacts directory (printed), and
    check it is a real render: a PNG of the window's size, not blank."""
    folder = tmp_path_factory.mktemp("ui-screenshots")
    print(f"UI screenshots: {folder}")
    publish = os.environ.get(SCREENSHOTS_ENV)

    def take(driver: WebDriver, name: str) -> Path:
        path = folder / f"{name}.png"
        png = driver.get_screenshot_as_png()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{name}: not a PNG"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width >= 600, f"{name}: {width}x{height}"
        assert height >= 400, f"{name}: {width}x{height}"
        # A blank page compresses to almost nothing; a rendered one does not.
        assert len(png) > 10_000, f"{name}: {len(png)} bytes, a blank render"
        path.write_bytes(png)
        if publish:
            Path(publish).mkdir(parents=True, exist_ok=True)
            (Path(publish) / f"ui-{name}.png").write_bytes(png)
        return path

    return take


def wait_for(check: Callable[[], Any], what: str, timeout: float = PAGE_TIMEOUT) -> Any:
    """Poll `check` until it answers something true (a page loading in the browser).

    While a form's submission navigates, the old page's elements go stale and the new
    page's are not there yet: both mean "not yet", not a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (NoSuchElementException, StaleElementReferenceException):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def parse_strictly(html: str, where: str) -> None:
    """html5lib implements the WHATWG parsing algorithm, and in strict mode raises at the
    first parse error the standard defines (bad nesting, stray end tags, duplicate
    attributes, a missing doctype): what browsers silently repair. html.parser reports none
    of those."""
    parser = html5lib.HTMLParser(strict=True)
    try:
        parser.parse(html)
    except Exception as exc:
        raise AssertionError(f"{where}: the HTML does not parse cleanly: {exc}") from exc


def check_headers(answer: httpx.Response) -> None:
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match is not None, "the page has no form with a CSRF token"
    return match[1]


class UiClient:
    """A browser-like HTTP client for the UI: keeps its session cookie."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=PAGE_TIMEOUT)

    def page(self, path: str, status: int = 200) -> str:
        answer = self.http.get(path)
        assert answer.status_code == status, f"GET {path}: {answer.status_code}\n{answer.text}"
        check_headers(answer)
        parse_strictly(answer.text, path)
        return answer.text

    def login(self, user: str, password: str) -> None:
        csrf = csrf_of(self.page("/ui/login"))
        answer = self.http.post(
            "/ui/login", data={"user": user, "password": password, "csrf": csrf, "next": "/ui/"}
        )
        assert answer.status_code == 303, answer.text

    def close(self) -> None:
        self.http.close()


def access_rules(*rules: dict[str, Any]) -> str:
    return json.dumps(list(rules))
