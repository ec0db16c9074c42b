"""The chat page streams: first words before the turn ends, Stop, a reload in mid-reply, markdown kept safe.

The server runs tests/utils/stream_agents.py: "hold <gate> <w1> <w2> ..." sends "<w1> " at once and
the rest only once the test opens <gate>; anything else is echoed back as one delta.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.utils.browser import unavailable
from tests.utils.factories import scalar
from tests.utils.gates import Gates, gate_server
from tests.utils.server import Server, app_env, running_app

REASON = unavailable()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402 - needs selenium, checked above

from tests.web.page import ChatPage, vendor_built  # noqa: E402

AGENTS = "tests.utils.stream_agents:registry"


@pytest.fixture(scope="module")
def gates() -> Iterator[Gates]:
    with gate_server() as gates:
        yield gates


@pytest.fixture(scope="module")
def streaming(direct_url: str, gates: Gates) -> Iterator[Server]:
    env = app_env(direct_url, agents=AGENTS)
    env["GATE_URL"] = gates.url
    with running_app(env) as server:
        yield server


@pytest.fixture
def page(streaming, browser) -> ChatPage:
    return ChatPage(browser, streaming.url).open()


def pending(engine, device: str) -> int:
    return scalar(
        engine, "SELECT count(*) FROM conversation_messages WHERE device_id = %(d)s AND status = 'pending'", d=device
    )


def last_reply(page: ChatPage) -> str:
    replies = page.replies()
    return replies[-1] if replies else ""


class TestStreaming:
    def test_the_first_words_show_before_the_turn_ends(self, page, gates, engine):
        page.type("hold first Hello brave new world")
        page.wait(lambda: last_reply(page) == "Hello", "the first word never showed while the turn ran")
        assert pending(engine, page.device_id()) == 1  # the turn is still in flight
        assert page.find("#stop").is_displayed() and not page.find("#send").is_displayed()
        gates.open("first")
        page.wait(lambda: last_reply(page) == "Hello brave new world" and page.idle(), "the rest never came")
        assert not page.find("#stop").is_displayed() and page.find("#send").is_displayed()
        assert pending(engine, page.device_id()) == 0
        assert len(page.log()) == 2
        # The lock after the turn, from the stream's data-lock, under the agent's display name.
        assert page.text("#lock").startswith("Handled by Helper until")

    def test_stop_keeps_the_partial_reply_marked_stopped(self, page, gates, engine):
        page.type("hold never Partial answer that never ends")
        page.wait(lambda: last_reply(page) == "Partial", "the first word never showed")
        page.find("#stop").click()
        page.wait(lambda: page.idle() and page.all("#log li.stopped"), "the reply was never marked stopped")
        assert last_reply(page) == "Partial"
        assert "Stopped" in page.text("#log li.stopped .note")
        device = page.device_id()
        assert pending(engine, device) == 0
        stored = scalar(
            engine,
            "SELECT content || '|' || (metadata->>'stopped') FROM conversation_messages "
            "WHERE device_id = %(d)s AND role = 'assistant'",
            d=device,
        )
        assert stored == "Partial |true"
        page.reload()  # history shows it stopped too, from the API's `stopped`
        assert page.replies() == ["Partial"] and page.all("#log li.stopped")
        assert page.say("and now?") == "and now?"  # the next message goes on as usual

    def test_a_reload_in_mid_reply_resumes_the_stream(self, page, gates, engine):
        page.type("hold resume Resumed after the reload")
        page.wait(lambda: last_reply(page) == "Resumed", "the first word never showed")
        page.reload()
        page.wait(lambda: last_reply(page) == "Resumed", "the reloaded page did not resume the reply")
        assert page.find("#stop").is_displayed()
        gates.open("resume")
        page.wait(lambda: last_reply(page) == "Resumed after the reload" and page.idle(), "the resumed stream stopped")
        assert [role for role, _, _ in page.log()] == ["user", "assistant"]
        page.reload()
        assert page.replies() == ["Resumed after the reload"]


PAYLOAD_LINES = [
    "**bold** and *leaning* with `code`",
    "",
    "- one",
    "- two",
    "",
    "[safe](https://example.org/x) and [bad](javascript:window.pwned=1)",
    '<script>window.pwned=2</script><img src=x onerror="window.pwned=3"><b onclick="window.pwned=4">raw</b>',
]


def rendered(page: ChatPage) -> dict:
    return page.driver.execute_script(
        "const li = [...document.querySelectorAll('#log li.assistant')].pop();"
        "const text = li.querySelector('.text');"
        "return {strong: [...text.querySelectorAll('strong')].map(e => e.textContent),"
        " em: [...text.querySelectorAll('em')].map(e => e.textContent),"
        " code: [...text.querySelectorAll('code')].map(e => e.textContent),"
        " items: [...text.querySelectorAll('li')].map(e => e.textContent),"
        " hrefs: [...text.querySelectorAll('a')].map(a => a.getAttribute('href')),"
        " scripts: document.querySelectorAll('#log script, #log img, #log [onclick], #log [onerror]').length,"
        " shown: text.innerText, pwned: window.pwned === undefined ? null : window.pwned}"
    )


class TestMarkdown:
    def test_markdown_renders_and_html_or_javascript_links_never_run(self, page, browser):
        if not vendor_built():
            pytest.skip("marked and DOMPurify were not built (npm missing at `make install`)")
        page.type_lines(PAYLOAD_LINES)
        page.wait(lambda: len(page.replies()) == 1 and page.idle(), "no reply")
        for when in ("streamed", "from history"):
            seen = rendered(page)
            assert seen["strong"] == ["bold"] and seen["em"] == ["leaning"] and seen["code"] == ["code"], when
            assert seen["items"] == ["one", "two"], when
            assert "https://example.org/x" in seen["hrefs"], when
            assert not any((href or "").strip().lower().startswith("javascript:") for href in seen["hrefs"]), when
            assert seen["scripts"] == 0 and seen["pwned"] is None, when
            assert "<script>" in seen["shown"], when  # raw HTML is shown as text, not run
            with pytest.raises(NoAlertPresentException):
                browser.switch_to.alert.text  # noqa: B018 - raises when no alert is open
            page.reload()
        user = page.driver.execute_script("return document.querySelector('#log li.user .text').textContent")
        assert user == "\n".join(PAYLOAD_LINES)  # the person's own text is never rendered as markdown

    def test_without_the_renderer_replies_are_plain_text_and_the_console_says_why(self, page, browser):
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/web/vendor/*"]})
        page.reload()
        browser.get_log("browser")  # forget the page load before the block
        page.reload()
        warnings = [e["message"] for e in browser.get_log("browser") if e["level"] == "WARNING"]
        assert any("plain text" in w for w in warnings), warnings
        page.type('**bold** <img src=x onerror="window.pwned=1">')
        page.wait(lambda: len(page.replies()) == 1 and page.idle(), "no reply")
        seen = rendered(page)
        assert seen["strong"] == [] and seen["scripts"] == 0 and seen["pwned"] is None
        assert seen["shown"] == '**bold** <img src=x onerror="window.pwned=1">'
