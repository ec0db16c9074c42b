"""The operator console in headless Chromium, next to a chat page in a second browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.utils.browser import WAIT_SECONDS, chromium, unavailable
from tests.utils.factories import scalar
from tests.utils.server import Server, app_env, running_app

REASON = unavailable()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402 - selenium checked above
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.web.page import ChatPage  # noqa: E402

ADMIN_KEY = "console-test-admin-key-5b2e9c"


@pytest.fixture(scope="module")
def server(direct_url: str) -> Iterator[Server]:
    with running_app(app_env(direct_url, admin_api_keys=f"default:{ADMIN_KEY}")) as server:
        yield server


@pytest.fixture
def operator_browser(tmp_path: Path):
    driver = chromium(tmp_path / "operator-profile", width=1400, height=1000)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    def __init__(self, driver: Any, url: str):
        self.driver, self.url = driver, url

    def wait(self, condition, message: str = "") -> Any:
        return WebDriverWait(self.driver, WAIT_SECONDS, poll_frequency=0.05).until(lambda d: condition(), message)

    def find(self, css: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def open(self, key: str = ADMIN_KEY) -> Console:
        self.driver.get(f"{self.url}/console")
        self.wait(lambda: self.driver.execute_script("return document.body.dataset.ready === 'true'"))
        self.find("#key").send_keys(key)
        self.find("#key-save").click()
        return self

    def refreshed(self) -> int:
        return int(self.driver.execute_script("return Number(document.body.dataset.refreshed || 0)"))

    def listed(self, device: str) -> bool:
        return device in self.driver.execute_script(
            "return [...document.querySelectorAll('#sessions tr')].map(r => r.dataset.device)")

    def open_conversation(self, device: str) -> None:
        """Click the conversation's row button (the list is redrawn by polling: try again if it was)."""
        def click() -> bool:
            try:
                rows = [r for r in self.all("#sessions tr") if r.get_attribute("data-device") == device]
                rows[0].find_element(By.CSS_SELECTOR, "button").click()
                return True
            except (StaleElementReferenceException, IndexError):
                return False
        self.wait(click, "the conversation's row could not be clicked")

    def fill(self, css: str, text: str) -> None:
        box = self.find(css)
        box.clear()
        box.send_keys(text)

    def history(self) -> list[tuple[str, str]]:
        """(classes, text) of each message shown, oldest first, read at once (polling redraws it)."""
        return [tuple(item) for item in self.driver.execute_script(
            "return [...document.querySelectorAll('#history li')]"
            ".map(li => [li.className, li.querySelector('.text').textContent])")]

    def meta(self) -> list[str]:
        return self.driver.execute_script(
            "return [...document.querySelectorAll('#history li .meta')].map(p => p.textContent)")

    def bars(self) -> dict[str, str]:
        return self.driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#chart rect')]"
            ".map(r => [r.dataset.agent, r.dataset.count]))")


def test_an_operator_takes_over_replies_and_hands_back(server, engine, browser, operator_browser, tmp_path: Path):
    chat = ChatPage(browser, server.url).open()
    assert chat.say("hi").startswith("Hi! I can book an appointment")
    device = chat.device_id()

    console = Console(operator_browser, server.url).open()
    console.wait(lambda: console.listed(device), "the chat page's conversation is not listed")
    console.open_conversation(device)
    console.wait(lambda: len(console.history()) == 2, "the conversation's history is not shown")
    assert all(" · arrived " in line for line in console.meta())
    console.fill("#operator", "Ana")
    console.find("#take-over").click()
    console.wait(lambda: "Taken over by Ana" in console.text("#detail-lock"), "the takeover is not shown")
    assert scalar(engine, "SELECT active_agent FROM conversation_states WHERE device_id = %(d)s", d=device) == "human"

    # The person chatting writes; the bot stays silent and the console highlights the held message.
    chat.type("I would like to talk to a person")
    chat.wait(lambda: chat.text("#status") == "A person will answer you here.", "no word that a person answers")
    assert chat.text("#lock").startswith("A person is handling this conversation")
    assert [text for role, _, text in chat.log() if role == "assistant"] == [
        "Hi! I can book an appointment or help with a bill. What would you like to do?"]
    console.wait(lambda: any("held" in classes.split() for classes, _ in console.history()), "no held message shown")
    held = [text for classes, text in console.history() if "held" in classes.split()]
    assert held == ["I would like to talk to a person"]

    console.fill("#reply", "Hello, Ana here. How can I help?")
    console.find("#send-reply").click()
    console.wait(lambda: console.history()[-1] == ("assistant by-human", "Hello, Ana here. How can I help?"),
                 "the operator's reply is not in the history")
    # The chat page, still open, picks the reply up by itself.
    chat.wait(lambda: chat.log()[-1] == ("assistant", "A person", "Hello, Ana here. How can I help?"),
              "the chat page never showed the operator's reply")

    before = console.refreshed()
    console.wait(lambda: console.refreshed() > before, "the console does not refresh by itself")
    assert console.bars() == {"human": "1"}
    operator_browser.save_screenshot(str(tmp_path / "console.png"))
    assert (tmp_path / "console.png").stat().st_size > 0

    console.find("#release").click()
    console.wait(lambda: console.text("#detail-lock").startswith("No agent holds"), "the release is not shown")
    chat.type("hi")
    chat.wait(lambda: chat.log()[-1][:2] == ("assistant", "manager") and chat.idle(), "the bot did not answer")
    assert chat.log()[-1][2].startswith("Hi! I can book an appointment")
    events = scalar(engine, "SELECT string_agg(event, ',' ORDER BY id) FROM conversation_audit WHERE device_id = %(d)s",
                    d=device)
    assert events == "takeover,release"


def test_errors_are_readable_lines(server, engine, browser, operator_browser):
    chat = ChatPage(browser, server.url).open()
    chat.say("hi")
    device = chat.device_id()

    console = Console(operator_browser, server.url).open(key="not-the-right-admin-key")
    console.wait(lambda: console.find("#error").is_displayed(), "a refused key shows no error")
    assert console.text("#error") == "The admin key was refused (401). Enter a valid key."
    assert console.find("#key-form").is_displayed()

    console.find("#key").send_keys(ADMIN_KEY)
    console.find("#key-save").click()
    console.wait(lambda: console.listed(device))
    console.open_conversation(device)
    console.wait(lambda: len(console.history()) == 2)
    console.fill("#reply", "nobody took this over")
    console.find("#send-reply").click()
    console.wait(lambda: console.find("#error").is_displayed(), "a refused reply shows no error")
    assert console.text("#error") == "Take the conversation over first (409): no person holds it now."
    assert scalar(engine, "SELECT count(*) FROM conversation_messages WHERE device_id = %(d)s", d=device) == 2

    # The conversation is erased meanwhile: the console says so.
    import httpx

    assert httpx.delete(f"{server.url}/api/sessions/{device}",
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 204
    console.wait(lambda: "(404)" in console.text("#error"), "an erased conversation shows no 404 line")
    assert console.text("#error") == "That conversation does not exist (404): it may have been erased."
