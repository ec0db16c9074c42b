"""Headless Chromium from the Debian packages (chromium, chromium-driver), driven by selenium.

Selenium is given both paths, so it never looks for (or downloads) a browser or driver.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
WAIT_SECONDS = 20


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def unavailable() -> str | None:
    """Why no browser test can run here, or None when selenium, chromium and chromedriver are all present."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra installs it)"
    if _which(BROWSER_NAMES) is None or _which(DRIVER_NAMES) is None:
        return (
            "chromium and chromedriver are not installed "
            "(Debian packages chromium, chromium-driver; .ci/run installs them)"
        )
    return None


# Every host name but 127.0.0.1 fails to resolve, and no proxy is used: the page gets the
# local server and nothing else, as on a machine without a network.
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--no-proxy-server")
# Run before any page script: collects the page's Content-Security-Policy violations.
RECORD_VIOLATIONS = (
    "window.cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', e =>"
    "  window.cspViolations.push(e.effectiveDirective + ' ' + (e.blockedURI || 'inline')));"
)


def chromium(profile: Path, *, width: int = 1280, height: int = 900, offline: bool = False) -> Any:
    """A headless Chromium with a fresh profile in `profile`, recording its network and console logs.

    offline: only 127.0.0.1 is reachable (see OFFLINE); every page records its CSP violations (csp_violations).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSER_NAMES)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    for argument in OFFLINE if offline else ():
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_which(DRIVER_NAMES)))
    driver.set_page_load_timeout(WAIT_SECONDS)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_VIOLATIONS})
    return driver


@contextlib.contextmanager
def leaving_the_page(driver: Any) -> Iterator[None]:
    """At the block's end the browser closes its tab and goes on in a new one, so the page's open
    requests (its event stream) end.

    For a page of a server started in an enclosing running_app block: uvicorn's graceful shutdown waits
    for every open request, so with the page still open the server would wait out Server.stop's 10 s
    and be killed. Going to another address is not enough: the page stays alive (back/forward cache)
    with its stream open.
    """
    try:
        yield
    finally:
        from selenium.common.exceptions import WebDriverException

        with contextlib.suppress(WebDriverException):  # a browser that already failed: the test's error stands
            page = driver.current_window_handle
            driver.switch_to.new_window("tab")
            fresh = driver.current_window_handle
            driver.switch_to.window(page)
            driver.close()
            driver.switch_to.window(fresh)


def csp_violations(driver: Any) -> list[str]:
    """The current page's CSP violations so far, as "directive blocked-uri" strings."""
    return driver.execute_script("return window.cspViolations || []")


def console_errors(driver: Any) -> list[str]:
    """The console's error messages (failed loads, refused scripts, exceptions) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def failed_requests(driver: Any) -> list[str]:
    """Requests since the last call that failed or got a 4xx/5xx, as "url: reason" strings.

    Reads (and so empties) the performance log, as sent_requests does.
    """
    urls: dict[str, str] = {}
    failed = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed":
            failed.append(f"{urls.get(params['requestId'], '?')}: {params['errorText']}")
        elif message["method"] == "Network.responseReceived" and params["response"]["status"] >= 400:
            failed.append(f"{params['response']['url']}: {params['response']['status']}")
    return failed


def sent_requests(driver: Any) -> list[dict[str, Any]]:
    """The requests the page sent since the last call: {"method", "url", "headers", "body"} each (from the
    performance log; body is the request's text, None without one)."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            found.append(
                {
                    "method": request["method"],
                    "url": request["url"],
                    "headers": request["headers"],
                    "body": request.get("postData"),
                }
            )
    return found
