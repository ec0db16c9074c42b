"""The chat page in headless Chromium against the app under uvicorn and the real database."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.utils.browser import leaving_the_page, sent_requests, unavailable
from tests.utils.factories import scalar
from tests.utils.server import app_env, running_app

REASON = unavailable()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

from tests.web.page import ChatPage  # noqa: E402 - needs selenium, checked just above


@pytest.fixture
def page(served, browser, engine) -> ChatPage:
    return ChatPage(browser, served.url).open()


class TestConversation:
    def test_booking_by_typing_with_a_reload_halfway(self, page, browser, engine, tmp_path: Path):
        assert page.log() == []
        assert page.find("#empty").is_displayed()
        reply = page.say("I need to book an appointment")
        assert "What day would you like?" in reply
        assert page.log()[-1][1] == "Scheduling"  # the display name, not the key
        assert "Scheduling" in page.text("#lock") and "until" in page.text("#lock")
        assert page.say("tomorrow").startswith("What time on tomorrow?")

        page.reload()
        shown = page.log()
        assert [(role, text) for role, _, text in shown][0::2] == [
            ("user", "I need to book an appointment"),
            ("user", "tomorrow"),
        ]
        assert [who for _, who, _ in shown] == ["You", "Scheduling", "You", "Scheduling"]

        assert page.say("10am") == "Book tomorrow at 10:00, confirm? (yes/no)"
        assert page.say("yes") == "You're booked for tomorrow at 10:00. See you then!"
        assert page.text("#lock") == "No agent is handling this conversation."
        device = page.device_id()
        assert scalar(engine, "SELECT count(*) FROM conversation_messages WHERE device_id = %(d)s", d=device) == 8

        browser.save_screenshot(str(tmp_path / "conversation-desktop.png"))
        browser.set_window_size(360, 800)
        page.wait(lambda: browser.execute_script("return window.innerWidth") <= 360, "the window did not narrow")
        # Nothing sticks out sideways on a 360 px screen.
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 360
        browser.save_screenshot(str(tmp_path / "conversation-360.png"))
        assert (tmp_path / "conversation-360.png").stat().st_size > 0

    def test_every_request_of_the_page_carries_its_device_id(self, page, browser, engine):
        page.say("hi")
        page.reload()
        page.find("#new-conversation").click()
        page.wait(lambda: page.text("#status") == "A new conversation has started.")
        device = page.device_id()
        # The first visit asked the server for its id (POST /api/devices, no id of its own yet).
        api = [r for r in sent_requests(browser) if "/api/" in r["url"] and not r["url"].endswith("/api/devices")]
        assert {(r["method"], r["url"].split("/api/")[1].split("?")[0]) for r in api} >= {
            ("GET", "chat/messages"),
            ("GET", "chat/sessions"),
            ("POST", "chat/stream"),
            ("POST", "chat/new"),
            ("GET", "chat/stream/web/stream"),
        }
        for sent in api:
            headers = {k.lower(): v for k, v in sent["headers"].items()}
            assert headers.get("x-device-id") == device, sent
        assert scalar(engine, "SELECT count(*) FROM conversation_states WHERE device_id = %(d)s", d=device) == 1

    def test_each_message_gets_a_fresh_message_id_its_idempotency_key(self, page, browser):
        sent_requests(browser)  # forget the page load
        page.say("hi")
        page.say("hi")
        ids = [
            json.loads(r["body"])["messages"][-1]["id"]
            for r in sent_requests(browser)
            if r["method"] == "POST" and r["url"].endswith("/api/chat/stream")
        ]
        assert len(ids) == 2 and len(set(ids)) == 2
        assert page.replies()[0] == page.replies()[1]  # both answered: the second was not taken for a retry


class TestConversations:
    def test_new_conversation_empties_the_page_and_lists_the_old_one(self, page):
        page.say("I need to book an appointment")
        page.find("#new-conversation").click()
        page.wait(lambda: page.text("#status") == "A new conversation has started.")
        assert page.log() == []
        assert page.text("#lock") == "No agent is handling this conversation."
        page.wait(lambda: len(page.all("#sessions-list button")) == 2, "the old session is not listed")
        page.find("#past summary").click()
        current, old = [b.text for b in page.all("#sessions-list button")]
        assert current.startswith("Current conversation") and current.endswith("0 messages")
        assert old.startswith("Conversation") and old.endswith("2 messages")
        page.reload()
        assert page.log() == []
        # The old one can be read again, and left.
        page.find("#past summary").click()
        page.all("#sessions-list button")[1].click()
        page.wait(lambda: len(page.log()) == 2)
        assert page.log()[0] == ("user", "You", "I need to book an appointment")
        assert not page.find("#composer").is_displayed()
        page.find("#back-to-current").click()
        page.wait(lambda: page.log() == [] and page.find("#composer").is_displayed())
        assert page.say("hi").startswith("Hi!")

    def test_delete_my_history_after_confirming(self, page, browser, engine):
        page.say("I need to book an appointment")
        device = page.device_id()
        page.find("#delete-history").click()
        browser.switch_to.alert.dismiss()  # changed my mind: nothing is deleted
        assert len(page.log()) == 2
        assert scalar(engine, "SELECT count(*) FROM conversation_messages WHERE device_id = %(d)s", d=device) == 2
        page.find("#delete-history").click()
        alert = browser.switch_to.alert
        assert "cannot be undone" in alert.text
        alert.accept()
        page.wait(lambda: page.text("#status") == "Your history has been deleted.")
        assert page.log() == [] and page.all("#sessions-list li") == []
        for table in ("conversation_states", "conversation_messages", "conversation_audit"):
            assert scalar(engine, f"SELECT count(*) FROM {table} WHERE device_id = %(d)s", d=device) == 0
        page.reload()
        assert page.log() == []


class TestKeyboardAndLabels:
    def test_keyboard_alone_reaches_every_control(self, page, browser):
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        def tab() -> str:
            ActionChains(browser).send_keys(Keys.TAB).perform()
            return browser.execute_script("return document.activeElement.id")

        assert [tab() for _ in range(5)] == ["skip", "new-conversation", "delete-history", "message", "send"]
        # Type and send from the keyboard, then start a new conversation with Tab and Enter only.
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
        assert browser.execute_script("return document.activeElement.id") == "message"
        ActionChains(browser).send_keys("hi", Keys.ENTER).perform()
        page.wait(lambda: len(page.replies()) == 1 and page.idle(), "no reply to a message sent by keyboard")
        page.reload()
        assert [tab() for _ in range(2)] == ["skip", "new-conversation"]
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        page.wait(lambda: page.text("#status") == "A new conversation has started.")
        assert page.log() == []
        assert browser.execute_script("return document.activeElement.id") == "message"

    def test_controls_are_labelled_for_screen_readers(self, page, browser):
        labelled = browser.execute_script(
            "const box = document.getElementById('message');"
            "return [box.labels.length, document.getElementById('log').getAttribute('aria-label'),"
            " document.getElementById('log').getAttribute('role'),"
            " document.getElementById('status').getAttribute('role'),"
            " document.getElementById('error').getAttribute('role'), document.documentElement.lang,"
            " [...document.querySelectorAll('button')].every(b => b.textContent.trim().length > 0)]"
        )
        assert labelled == [1, "Conversation", "log", "status", "alert", "en", True]


class TestSignedIds:
    def test_the_page_asks_the_server_for_a_signed_id(self, direct_url, browser, engine):
        with (
            running_app(app_env(direct_url, device_id_secret="browser-test-device-secret")) as server,
            leaving_the_page(browser),
        ):
            page = ChatPage(browser, server.url).open()
            device = page.device_id()
            device_uuid, dot, tag = device.partition(".")
            assert dot and len(tag) >= 40
            assert page.say("I need to book an appointment").startswith("Sure, let me get you to scheduling")
            assert page.find("#error").get_attribute("hidden") is not None
            assert (
                scalar(engine, "SELECT count(*) FROM conversation_messages WHERE device_id = %(d)s", d=device_uuid) == 2
            )
            page.reload()
            assert page.device_id() == device and len(page.log()) == 2


class TestWaitingAndErrors:
    def test_a_queued_message_is_streamed_once_its_turn_comes(self, direct_url, browser, engine, tmp_path: Path):
        release = tmp_path / "release"
        env = app_env(direct_url, agents="tests.web.agents:registry", chat_wait_seconds=1)
        env["WEB_TEST_RELEASE_FILE"] = str(release)
        with running_app(env) as server, ThreadPoolExecutor(1) as pool, leaving_the_page(browser):
            page = ChatPage(browser, server.url).open()
            # Another tab of the same device keeps the conversation busy, so the page's message waits.
            busy = pool.submit(
                httpx.post,
                f"{server.url}/api/chat",
                json={"message": "slow"},
                headers={"X-Device-ID": page.device_id()},
                timeout=60,
            )
            page.wait(lambda: scalar(engine, "SELECT count(*) FROM conversation_messages") == 1, "slow never arrived")
            page.type("hi")
            page.wait(
                lambda: "Waiting for the reply" in page.text("#status"), "no waiting indicator for the queued message"
            )
            assert "waiting" in page.find("#status").get_attribute("class").split()
            assert page.replies() == []
            release.touch()
            assert busy.result(30).status_code == 200
            page.wait(lambda: len(page.replies()) == 1, "the late reply never showed")
            assert page.replies()[0].startswith("Hi! I can book an appointment")
            page.wait(page.idle)
            assert page.text("#status") == ""
            assert page.find("#error").get_attribute("hidden") is not None

    def test_degraded_replies_are_marked_and_errors_are_readable(self, direct_url, browser, engine):
        from tests.utils.proxy import outage_proxy

        with (
            outage_proxy(direct_url) as proxy,
            running_app(app_env(proxy.url, db_connect_timeout=2)) as server,
            leaving_the_page(browser),
        ):
            page = ChatPage(browser, server.url).open()
            proxy.down()
            reply = page.say("hi")
            assert reply.startswith("Hi!")
            note = page.find("#log li.degraded .note").text
            assert "degraded" in note
            page.reload()  # the history cannot be read while the database is down
            error = page.text("#error-text")
            assert error == "The chat is not available right now. Please try again in a moment."
            assert "{" not in error
            proxy.up()
            page.find("#retry").click()
            page.wait(lambda: page.find("#error").get_attribute("hidden") is not None, "retry did not clear the error")
