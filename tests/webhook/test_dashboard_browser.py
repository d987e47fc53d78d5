"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium against uvicorn on loopback.

Each page is loaded against the seeded history of `tests/webhook/test_dashboard.py` and the numbers on screen are
checked, the client-side filter is typed into, the violations form is submitted and paged. A screenshot of every
page goes to `$CELVERN_SCREENSHOTS` (CI uploads it) or the test's tmp_path.

The browser is the system's (`/usr/bin/chromium`, `/usr/bin/chromedriver`), passed explicitly so Selenium Manager
never downloads one. Without it the tests skip, except in CI (`CI=true`), where they fail."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from tests.webhook.test_dashboard import (
    EXPECTED_DAYS,
    EXPECTED_RECENT,
    EXPECTED_SAFE,
    EXPECTED_TOP,
    TOKEN,
    make_app,
    make_store,
)

CHROMIUM = os.environ.get("CELVERN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CELVERN_CHROMEDRIVER", "/usr/bin/chromedriver")

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from starlette.applications import Starlette  # noqa: E402


def _missing_browser() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)) and shutil.which(path) is None:
            return f"{path} is missing: install Debian's chromium and chromium-driver packages"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = _missing_browser()
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests need Chromium in CI: {missing}")
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_window_size(1280, 900)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def _serve(app: Starlette) -> Iterator[str]:
    """`app` under uvicorn on a free loopback port, as its base URL."""
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(500):
        if server.started:
            started.set()
            break
        thread.join(0.02)
    assert started.is_set(), "the dashboard did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = make_store(tmp_path_factory.mktemp("history"))
    try:
        with _serve(make_app(store)) as url:
            yield url
    finally:
        store.close()


@pytest.fixture(scope="module")
def token_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same dashboard with a token: pages need the session cookie of the login form."""
    store = make_store(tmp_path_factory.mktemp("history"))
    try:
        with _serve(make_app(store, token=TOKEN)) as url:
            yield url
    finally:
        store.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("CELVERN_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _open(browser: WebDriver, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, 10).until(lambda driver: driver.execute_script("return document.readyState") == "complete")


def _texts(browser: WebDriver, testid: str) -> list[str]:
    return [element.text for element in browser.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')]


def _one(browser: WebDriver, testid: str) -> WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def test_overview_page(browser: WebDriver, base_url: str, screenshots: Path) -> None:
    _open(browser, f"{base_url}/")
    assert browser.title == "Overview · celvern"
    assert [_one(browser, f"severity-{s}-enabled").text for s in ("high", "medium", "low")] == ["1", "2", "2"]
    assert [_one(browser, f"severity-{s}-total").text for s in ("high", "medium", "low")] == ["28", "40", "16"]
    for date, (deny, warn_audit, _) in EXPECTED_DAYS.items():
        assert _one(browser, f"bar-deny-{date}").get_attribute("data-value") == str(deny)
        assert _one(browser, f"bar-warnAudit-{date}").get_attribute("data-value") == str(warn_audit)
    tallest = _one(browser, "bar-warnAudit-2024-05-14")
    assert tallest.size["height"] > _one(browser, "bar-deny-2024-05-15").size["height"] > 0
    assert _texts(browser, "top-violated-policy") == [policy for policy, _ in EXPECTED_TOP]
    assert _texts(browser, "top-violated-total") == [str(total) for _, total in EXPECTED_TOP]
    assert _texts(browser, "safe-policy") == EXPECTED_SAFE
    assert _one(browser, "recent-count").text == str(EXPECTED_RECENT)
    assert len(_texts(browser, "recent-row")) == EXPECTED_RECENT
    assert [_one(browser, f"total-{key}").text for key in ("deny", "warnAudit", "scanFailures")] == ["5", "9", "2"]
    browser.save_screenshot(str(screenshots / "dashboard-overview.png"))


def test_policies_page_filter_box(browser: WebDriver, base_url: str, screenshots: Path) -> None:
    _open(browser, f"{base_url}/policies")
    assert _texts(browser, "policy-name") == [
        "disallow-privileged",
        "require-labels",
        "require-limits",
        "team-a/team-policy",
        "add-defaults",
    ]
    box = _one(browser, "policy-filter")
    box.send_keys("require")
    WebDriverWait(browser, 5).until(lambda _: _one(browser, "policies-visible").text == "2")
    visible = [
        row.get_attribute("data-policy")
        for row in browser.find_elements(By.CSS_SELECTOR, '[data-testid="policy-row"]')
        if row.is_displayed()
    ]
    assert visible == ["require-labels", "require-limits"]
    box.send_keys(" limits")
    WebDriverWait(browser, 5).until(lambda _: _one(browser, "policies-visible").text == "1")
    browser.save_screenshot(str(screenshots / "dashboard-policies.png"))


def test_policies_page_server_side_filters(browser: WebDriver, base_url: str) -> None:
    _open(browser, f"{base_url}/policies?severity=low")
    assert _texts(browser, "policy-name") == ["team-a/team-policy", "add-defaults"]
    assert _one(browser, "policies-total").text == "2"


def test_violations_page_filters_and_pages(browser: WebDriver, base_url: str, screenshots: Path) -> None:
    _open(browser, f"{base_url}/violations?limit=4")
    assert _texts(browser, "violations-total")[0] == "21"
    _one(browser, "input-policy").send_keys("disallow-privileged")
    _one(browser, "select-action").find_element(By.CSS_SELECTOR, 'option[value="deny"]').click()
    _one(browser, "search").click()
    WebDriverWait(browser, 5).until(lambda _: "policy=disallow-privileged" in browser.current_url)
    assert _texts(browser, "violations-total")[0] == "10"
    assert _texts(browser, "violations-range")[0] == "1–4"
    assert len(_texts(browser, "violation-row")) == 4
    browser.save_screenshot(str(screenshots / "dashboard-violations.png"))
    browser.find_elements(By.CSS_SELECTOR, '[data-testid="next-page"]')[0].click()
    WebDriverWait(browser, 5).until(lambda _: "offset=4" in browser.current_url)
    assert _texts(browser, "violations-range")[0] == "5–8"
    browser.find_elements(By.CSS_SELECTOR, '[data-testid="next-page"]')[0].click()
    WebDriverWait(browser, 5).until(lambda _: "offset=8" in browser.current_url)
    assert _texts(browser, "violations-range")[0] == "9–10"
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="next-page"]')


def test_violations_page_shows_a_bad_since(browser: WebDriver, base_url: str) -> None:
    _open(browser, f"{base_url}/violations")
    _one(browser, "input-since").send_keys("last week")
    _one(browser, "search").click()
    WebDriverWait(browser, 5).until(lambda _: browser.find_elements(By.CSS_SELECTOR, '[data-testid="query-error"]'))
    assert "since: expected an RFC 3339 time" in _one(browser, "query-error").text


def test_sign_in_with_the_form_and_sign_out(browser: WebDriver, token_url: str, screenshots: Path) -> None:
    """The login form POSTs the token (it never appears in the URL); "Sign out" ends the session."""
    browser.delete_all_cookies()
    _open(browser, f"{token_url}/")
    assert browser.title == "Sign in · celvern"
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="logout"]')
    _one(browser, "token").send_keys("not-the-token-at-all")
    _one(browser, "sign-in").click()
    WebDriverWait(browser, 5).until(lambda _: browser.find_elements(By.CSS_SELECTOR, '[data-testid="login-error"]'))
    assert "token" not in browser.current_url.split("/login")[-1]
    _one(browser, "token").send_keys(TOKEN)
    _one(browser, "sign-in").click()
    WebDriverWait(browser, 5).until(lambda _: browser.title == "Overview · celvern")
    assert TOKEN not in browser.current_url
    assert _one(browser, "recent-count").text == str(EXPECTED_RECENT)
    browser.save_screenshot(str(screenshots / "dashboard-signed-in.png"))
    _one(browser, "logout").click()
    WebDriverWait(browser, 5).until(lambda _: browser.title == "Sign in · celvern")
    _open(browser, f"{token_url}/violations")
    assert browser.title == "Sign in · celvern"
