"""The chat page in headless Chromium against the app under uvicorn and the real database."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils.browser import sent_requests, unavailable
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
        assert page.log()[-1][1] == "scheduling"
        assert "scheduling" in page.text("#lock") and "until" in page.text("#lock")
        assert page.say("tomorrow").startswith("What time on tomorrow?")

        page.reload()
        shown = page.log()
        assert [(role, text) for role, _, text in shown][0::2] == [
            ("user", "I need to book an appointment"), ("user", "tomorrow")
        ]
        assert [who for _, who, _ in shown] == ["You", "scheduling", "You", "scheduling"]

        assert page.say("10am") == "Book tomorrow at 10:00, confirm? (yes/no)"
        assert page.say("yes") == "You're booked for tomorrow at 10:00. See you then!"
        assert page.text("#lock") == "No agent is handling this conversation."
        device = page.device_id()
        assert scalar(engine, "SELECT count(*) FROM conversation_messages WHERE device_id = %(d)s", d=device) == 8
