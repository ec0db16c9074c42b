"""Headless Chromium from the Debian packages (chromium, chromium-driver), driven by selenium.

Selenium is given both paths, so it never looks for (or downloads) a browser or driver.
"""

from __future__ import annotations

import json
import shutil
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
        return "chromium and chromedriver are not installed (Debian packages chromium, chromium-driver; .ci/run installs them)"
    return None


def chromium(profile: Path, *, width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium with a fresh profile in `profile`, recording its network log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSER_NAMES)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_which(DRIVER_NAMES)))
    driver.set_page_load_timeout(WAIT_SECONDS)
    return driver


def sent_requests(driver: Any) -> list[dict[str, Any]]:
    """The requests the page sent since the last call: {"method", "url", "headers"} each (from the performance log)."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            found.append({"method": request["method"], "url": request["url"], "headers": request["headers"]})
    return found
