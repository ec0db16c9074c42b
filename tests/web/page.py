"""The chat page as a test uses it: type, send, read the log, the lock and the status."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.utils.browser import WAIT_SECONDS

T = TypeVar("T")


def vendor_built() -> bool:
    """True when `make install` copied marked and DOMPurify into the package (it needs npm)."""
    vendor = resources.files("app.web").joinpath("vendor")
    return all(vendor.joinpath(name).is_file() for name in ("marked.umd.js", "purify.min.js"))


class ChatPage:
    def __init__(self, driver: Any, url: str):
        self.driver, self.url = driver, url

    def wait(self, condition, message: str = "") -> Any:
        return WebDriverWait(self.driver, WAIT_SECONDS, poll_frequency=0.05).until(lambda d: condition(), message)

    def open(self) -> ChatPage:
        self.driver.get(f"{self.url}/")
        self.wait(self.ready, "the page never showed its history")
        return self

    def reload(self) -> ChatPage:
        self.driver.refresh()
        self.wait(self.ready, "the page never showed its history after a reload")
        return self

    def ready(self) -> bool:
        return self.driver.execute_script("return document.body.dataset.ready === 'true'")

    def idle(self) -> bool:
        return self.driver.execute_script("return document.body.dataset.busy !== 'true'")

    def find(self, css: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def log(self) -> list[tuple[str, str, str]]:
        """(role, who, text) of each message shown, oldest first.

        Read in one script, so a re-render between reads cannot leave stale element references.
        """
        rows = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#log > li')).map(li => ["
            "  li.classList.contains('user') ? 'user' : 'assistant',"
            "  (li.querySelector('.who strong') || {innerText: ''}).innerText.trim(),"
            "  (li.querySelector('.text') || {innerText: ''}).innerText.trim()])"
        )
        return [tuple(row) for row in rows]

    def replies(self) -> list[str]:
        return [text for role, _, text in self.log() if role == "assistant"]

    def type(self, text: str) -> None:
        """Type into the message box and press Enter, as a person does."""
        box = self.find("#message")
        box.click()
        box.send_keys(text, Keys.ENTER)

    def type_lines(self, lines: list[str]) -> None:
        """Type lines into the message box with Shift+Enter between them, then press Enter once."""
        from selenium.webdriver.common.action_chains import ActionChains

        box = self.find("#message")
        box.click()
        for index, line in enumerate(lines):
            if index:
                ActionChains(self.driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
            if line:
                box.send_keys(line)
        box.send_keys(Keys.ENTER)

    def say(self, text: str) -> str:
        """Send text and wait for its reply; returns the reply."""
        before = len(self.replies())
        self.type(text)
        self.wait(lambda: len(self.replies()) > before and self.idle(), f"no reply to {text!r}")
        return self.replies()[-1]

    def text(self, css: str) -> str:
        """The shown text of the element, found again if the page replaced it between find and read."""
        return self._on_fresh(css, lambda element: element.text)

    def click(self, css: str) -> None:
        """Click the first element matching css, found again if the page replaced it between find and click."""
        self._on_fresh(css, lambda element: element.click())

    def _on_fresh(self, css: str, use: Callable[[Any], T]) -> T:
        # The page re-renders as events arrive: an element found a moment ago may be gone by its use.
        for _ in range(5):
            try:
                return use(self.find(css))
            except StaleElementReferenceException:
                continue
        return use(self.find(css))

    def device_id(self) -> str | None:
        return self.driver.execute_script("return localStorage.getItem('agent-sessions.device-id')")
