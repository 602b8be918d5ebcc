"""The dashboard and /docs in a real headless Chromium (Selenium, Debian's chromium and
chromium-driver), against the app under a real server and a real worker, with API keys
required: the pages ask for the key, keep it for the tab, and send it with every call.

Chromium resolves no host name but 127.0.0.1 (`--host-resolver-rules`) and uses no proxy, so
a page that needed a CDN would fail here; the performance log lists every request the pages
made, and all of them must have gone to the app."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.state import fresh
from tests.helpers import (
    ROOT,
    SEED_SPEC,
    auth_headers,
    live_server,
    tutorial_fit,
    two_classes,
    upload,
)

SCREENSHOT = ROOT / "docs" / "screenshots" / "dashboard-job.png"
# The tracked screenshot is rewritten only on request (KJ_WRITE_SCREENSHOTS=1), so that a test
# run leaves the work tree as it was; otherwise it goes to the test's tmp_path.
WRITE_SCREENSHOTS = "KJ_WRITE_SCREENSHOTS"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--no-proxy-server", "--window-size=1280,1000",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver; "
                    ".ci/run installs it)")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium is not installed (the test extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path,
                                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Any) -> list[str]:
    """Every URL the pages asked for since the last call (the performance log drains)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def full_page_png(driver: Any) -> bytes:
    """The whole page, not only the window's height (DevTools' captureBeyondViewport)."""
    import base64

    width, height = driver.execute_script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    return base64.b64decode(shot["data"])


def wait(driver: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def attribute(selector: str, name: str) -> Any:
    """A wait condition: the first match's attribute, None while nothing matches (read in one
    script: the pages replace elements as events arrive)."""

    def read(driver: Any) -> Any:
        return driver.execute_script(
            "const e = document.querySelector(arguments[0]);"
            "return e === null ? null : e.getAttribute(arguments[1]);", selector, name)

    return read


def test_job_page_draws_live_curves_and_docs_work_offline(
        browser: Any, worker: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    key = auth_headers()["Authorization"].removeprefix("Bearer ")
    with live_server() as host, httpx.Client(base_url=f"http://{host}", timeout=30,
                                             headers=auth_headers()) as http:
        base = f"http://{host}"
        x, y = two_classes()
        ds = upload(http, "two-classes", x=x, y=y)
        spec = http.post("/v1/specs", json=SEED_SPEC).json()
        job_id = tutorial_fit(http, spec["id"], ds["id"], "ui-seed-linear")

        # The job page without a key: the API answers 401 and the header asks for one.
        browser.get(f"{base}/ui/jobs/{job_id}")
        field = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR,
                                                        "header form#api-key input"), 30)[0]
        assert field.get_attribute("type") == "password"
        assert "API key is required" in wait(
            browser, lambda d: d.find_element(By.CSS_SELECTOR, "#main .error").text, 10)
        refused = browser.get_log("browser")  # Chromium logs each 401 as an error
        assert refused and all("401" in e["message"] for e in refused), refused
        field.send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "form#api-key button[type=submit]").click()
        # Saved for this tab only (sessionStorage), and the page asks again with it.
        wait(browser, lambda d: d.execute_script(
            "return sessionStorage.getItem('kj-api-key')") == key, 10)
        assert browser.execute_script("return localStorage.length") == 0

        # The job page, opened while the job is queued or running: its curves grow from the
        # event stream until there is one point per epoch, training and validation.
        first_status = wait(browser, attribute("#status .badge", "data-status"), 30)
        assert wait(browser, lambda d: attribute('.chart[data-metric="loss"]', "data-points")(d)
                    == "5")
        assert attribute('.chart[data-metric="loss"]', "data-val-points")(browser) == "5"
        assert attribute('.chart[data-metric="binary_accuracy"]', "data-points")(browser) == "5"
        assert wait(browser, lambda d: attribute("#status .badge", "data-status")(d)
                    == "succeeded")
        # uPlot drew its canvas and legend; the decision-line image has loaded.
        assert browser.find_elements(By.CSS_SELECTOR, '.chart[data-metric="loss"] canvas')
        legend = browser.find_element(By.CSS_SELECTOR, '.chart[data-metric="loss"] .u-legend')
        assert "training" in legend.text and "validation" in legend.text
        wait(browser, lambda d: d.execute_script(
            "const i = document.querySelector('#boundary img');"
            "return i !== null && i.complete && i.naturalWidth > 0;"), 30)
        assert not browser.find_elements(By.CSS_SELECTOR, "form#api-key")  # the key works
        shot = SCREENSHOT if os.environ.get(WRITE_SCREENSHOTS) == "1" else (
            tmp_path / "dashboard-job.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.write_bytes(full_page_png(browser))

        job_urls = requested_urls(browser)
        if first_status in ("queued", "running"):  # it followed the live stream
            assert f"{base}/v1/jobs/{job_id}/events" in job_urls

        # A link to the API (the job's JSON) fetches with the key and opens what came back.
        page = browser.current_window_handle
        browser.find_element(By.LINK_TEXT, "JSON").click()
        wait(browser, lambda d: len(d.window_handles) == 2, 15)
        browser.switch_to.window(next(h for h in browser.window_handles if h != page))
        shown = wait(browser, lambda d: d.execute_script(
            "return location.protocol === 'blob:' && document.body ? document.body.innerText"
            " : null;"), 15)
        assert json.loads(shown)["id"] == job_id
        browser.close()
        browser.switch_to.window(page)

        # The other pages list what the job made.
        browser.get(f"{base}/ui")
        assert wait(browser, attribute(f'tr[data-job-id="{job_id}"]', "data-status"),
                    15) == "succeeded"
        (tmp_path / "dashboard-jobs.png").write_bytes(full_page_png(browser))
        browser.get(f"{base}/ui/models/ui-seed-linear")
        wait(browser, attribute('#versions tr[data-version="1"]', "data-version"), 15)
        browser.find_element(By.CSS_SELECTOR, "form.inline button[type=submit]").click()
        wait(browser, lambda d: d.execute_script(  # its decision line over the chosen dataset
            "const i = document.querySelector('#boundary img');"
            "return i !== null && i.complete && i.naturalWidth > 0;"), 15)
        (tmp_path / "dashboard-model.png").write_bytes(full_page_png(browser))
        browser.get(f"{base}/ui/datasets")
        assert wait(browser, attribute(f'tr[data-dataset="{ds["id"]}"] [data-array="x"]',
                                       "data-array"), 15) == "x"
        (tmp_path / "dashboard-datasets.png").write_bytes(full_page_png(browser))

        # /docs: Swagger UI from the package lists the operations, with no internet.
        browser.get(f"{base}/docs")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 20, 30)
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR,
                                                       ".opblock-summary-path")}
        assert "/v1/jobs/{job_id}/events" in {p.replace("\u200b", "") for p in paths}

        urls = job_urls + requested_urls(browser)
        assert any(u.endswith("/swagger-ui-bundle.js") for u in urls)
        assert any(u.endswith("/openapi.json") for u in urls)
        # Network requests only: chrome:// pages (the first new tab) are the browser's own.
        outside = [u for u in urls if u.split(":")[0] in ("http", "https", "ws", "wss", "ftp")
                   and not u.startswith(f"{base}/")]
        assert outside == [], outside
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe

        # And the cut-off is real: a CDN request fails in this browser.
        failed = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css')"
            ".then(() => done(false), () => done(true));")
        assert failed is True
    assert time.monotonic() - started < 60


def test_a_server_without_keys_asks_for_none(browser: Any, client: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """KJ_AUTH=off (as auto is on loopback before the first key): the pages work as they did
    before keys existed, with no form and nothing stored."""
    from selenium.webdriver.common.by import By

    x, y = two_classes(n=20)
    ds = upload(client, "open-mode", x=x, y=y)
    monkeypatch.setenv("KJ_AUTH", "off")
    with fresh():
        with live_server() as host:
            browser.get(f"http://{host}/ui/datasets")
            assert wait(browser, attribute(f'tr[data-dataset="{ds["id"]}"]', "data-dataset"),
                        15) == ds["id"]
            assert not browser.find_elements(By.CSS_SELECTOR, "form#api-key")
            assert browser.execute_script("return sessionStorage.length") == 0
            assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    monkeypatch.undo()
